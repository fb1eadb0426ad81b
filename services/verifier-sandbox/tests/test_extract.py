import pytest
from halo_verifiers.extract import detect_language, extract_code, normalize_language


def test_fenced_block_wins_and_language_is_normalised() -> None:
    text = "Here you go:\n```C++\n#include <iostream>\nint main(){}\n```\nThanks."
    got = extract_code(text)
    assert got.source == "fence" and got.language == "cpp"
    assert got.code == "#include <iostream>\nint main(){}\n"


def test_wanted_language_and_longest_block_are_chosen() -> None:
    text = ("```python\nprint(f(2))\n```\nand the solution\n```python\ndef f(x):\n    y = x * 2\n    return y\n```\n"
            "```rust\nfn main() {}\n```")
    assert extract_code(text, "python").code.startswith("def f(x):")
    assert extract_code(text, "rs").code == "fn main() {}\n"


def test_unterminated_fence_runs_to_the_end() -> None:
    got = extract_code("```go\npackage main\nfunc main() {")
    assert got.source == "fence" and got.code.startswith("package main") and got.language == "go"


def test_tilde_fence_and_longer_backtick_fences() -> None:
    assert extract_code("~~~py\nx = 1\n~~~").code == "x = 1\n"
    assert extract_code("````c\nint x = 1;\n```\nstill code\n````").code == "int x = 1;\n```\nstill code\n"


def test_tags_then_raw_and_reasoning_is_dropped() -> None:
    assert extract_code("<think>```c\nint draft;\n```</think><code>int final_answer;</code>").code == "int final_answer;\n"
    got = extract_code("  x = 1\n")
    assert got.source == "raw" and got.code == "  x = 1\n"
    assert extract_code("<think>only thoughts, cut off").source == "none"
    assert extract_code("   \n").source == "none"


@pytest.mark.parametrize(
    ("code", "lang"),
    [
        ('#include <stdio.h>\nint main(){ printf("hi"); }', "c"),
        ("#include <iostream>\nusing namespace std;\nint main(){ cout << 1; }", "cpp"),
        ('fn main() { let mut x = 1; println!("{}", x); }', "rust"),
        ('package main\nimport "fmt"\nfunc main() { fmt.Println(1) }', "go"),
        ("def add(a, b):\n    return a + b\n", "python"),
        ('{"a": [1, 2]}', "json"),
        ("hello world", None),
    ],
)
def test_detect_language(code: str, lang: str | None) -> None:
    assert detect_language(code) == lang


def test_normalize_language_aliases() -> None:
    assert [normalize_language(x) for x in ("Py", "golang", "c++", "RS", "", "cobol")] == [
        "python", "go", "cpp", "rust", None, None]
