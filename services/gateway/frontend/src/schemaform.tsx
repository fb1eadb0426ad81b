// A form generated from a JSON Schema (pydantic's): every field with its default, help text, enum and
// required mark, without hand-written forms. Only fields the user sets are sent; the server fills defaults.
import type { JSX } from "preact";

export type Schema = Record<string, any>;
/** path ("data.train") -> the raw value typed in (string, or boolean for checkboxes). */
export type Values = Record<string, string | boolean>;

export function resolve(s: Schema, root: Schema): Schema {
  while (s && s.$ref) s = root.$defs?.[s.$ref.replace("#/$defs/", "")] ?? {};
  return s ?? {};
}

/** ``anyOf [X, null]`` -> X (and whether null is allowed). */
export function unwrap(s: Schema, root: Schema): { schema: Schema; nullable: boolean } {
  const r = resolve(s, root);
  if (Array.isArray(r.anyOf)) {
    const rest = r.anyOf.filter((x: Schema) => x.type !== "null");
    if (rest.length === 1) {
      return { schema: { ...resolve(rest[0], root), description: r.description ?? s.description, default: r.default,
        title: r.title ?? rest[0].title }, nullable: rest.length < r.anyOf.length };
    }
  }
  return { schema: { ...r, description: s.description ?? r.description, default: s.default ?? r.default }, nullable: false };
}

/** The spec to send: each set value parsed by its schema type, nested by its path. Throws naming a bad field. */
export function buildSpec(schema: Schema, values: Values): Record<string, unknown> {
  const out: Record<string, any> = {};
  for (const [path, raw] of Object.entries(values)) {
    if (raw === "") continue;
    const s = schemaAt(schema, path.split("."));
    const v = parse(path, s, raw);
    const keys = path.split(".");
    let node = out;
    for (const k of keys.slice(0, -1)) node = node[k] ??= {};
    node[keys[keys.length - 1]] = v;
  }
  return out;
}

function schemaAt(root: Schema, path: string[]): Schema {
  let s: Schema = root;
  for (const k of path) s = unwrap(unwrap(s, root).schema.properties?.[k] ?? {}, root).schema;
  return s;
}

function parse(path: string, s: Schema, raw: string | boolean): unknown {
  if (typeof raw === "boolean") return raw;
  const type = s.type ?? (s.enum ? typeof s.enum[0] : undefined);
  if (type === "integer" || type === "number") {
    const n = Number(raw);
    if (!Number.isFinite(n) || (type === "integer" && !Number.isInteger(n))) {
      throw new Error(`${path}: ${JSON.stringify(raw)} is not ${type === "integer" ? "an integer" : "a number"}`);
    }
    return n;
  }
  if (type === "array" && ["string", "number", "integer"].includes(s.items?.type)) {
    return raw.split(",").map((x) => x.trim()).filter(Boolean).map((x) => (s.items.type === "string" ? x : Number(x)));
  }
  if (type === "string") return raw;
  try {
    return JSON.parse(raw);
  } catch {
    throw new Error(`${path}: not valid JSON`);
  }
}

interface Props {
  schema: Schema;
  values: Values;
  onChange: (path: string, v: string | boolean) => void;
  datalists?: Record<string, string>; // path -> datalist id
}

export function SchemaForm({ schema, values, onChange, datalists = {} }: Props) {
  return <Fields node={schema} root={schema} prefix="" values={values} onChange={onChange} datalists={datalists}
    required={schema.required ?? []} />;
}

function Fields({ node, root, prefix, values, onChange, datalists, required }: {
  node: Schema; root: Schema; prefix: string; required: string[] } & Omit<Props, "schema">) {
  const props = Object.entries(resolve(node, root).properties ?? {}) as [string, Schema][];
  // Required first, then scalars, then nested objects.
  const order = (k: string, s: Schema) => (required.includes(k) ? 0 : isObject(s, root) ? 2 : 1);
  props.sort((a, b) => order(...a) - order(...b));
  return (
    <>
      {props.map(([key, raw]) => {
        const path = prefix ? `${prefix}.${key}` : key;
        const { schema: s } = unwrap(raw, root);
        if (isObject(raw, root)) {
          return (
            <details open={required.includes(key)}>
              <summary><b>{s.title ?? key}</b> <span class="muted">{s.description ?? ""}</span></summary>
              <fieldset>
                <Fields node={s} root={root} prefix={path} values={values} onChange={onChange} datalists={datalists}
                  required={s.required ?? []} />
              </fieldset>
            </details>
          );
        }
        return <Field path={path} s={s} required={required.includes(key)} value={values[path]}
          onChange={onChange} list={datalists?.[path]} />;
      })}
    </>
  );
}

function isObject(raw: Schema, root: Schema): boolean {
  const s = unwrap(raw, root).schema;
  return s.type === "object" && !!s.properties;
}

function Field({ path, s, required, value, onChange, list }: { path: string; s: Schema; required: boolean;
  value: string | boolean | undefined; onChange: Props["onChange"]; list?: string }) {
  const label = `${s.title ?? path}${required ? " *" : ""}`;
  const set = (v: string | boolean) => onChange(path, v);
  const def = s.default;
  let input: JSX.Element;
  if (s.enum) {
    input = (
      <select name={path} value={value === undefined ? "" : String(value)}
        onChange={(e) => set((e.target as HTMLSelectElement).value)}>
        <option value="">{def === undefined || def === null ? "(not set)" : `default: ${def}`}</option>
        {s.enum.map((o: unknown) => <option value={String(o)}>{String(o)}</option>)}
      </select>
    );
  } else if (s.type === "boolean") {
    const checked = value === undefined ? def === true : value === true;
    input = <input type="checkbox" name={path} checked={checked} onChange={(e) => set((e.target as HTMLInputElement).checked)} />;
  } else if (s.type === "integer" || s.type === "number") {
    input = <input type="number" name={path} step={s.type === "integer" ? 1 : "any"} min={s.minimum} max={s.maximum}
      placeholder={def === undefined || def === null ? "" : String(def)} value={(value as string) ?? ""}
      onInput={(e) => set((e.target as HTMLInputElement).value)} />;
  } else if (s.type === "string") {
    input = <input type="text" name={path} size={50} list={list} required={required}
      placeholder={def === undefined || def === null ? "" : String(def)} value={(value as string) ?? ""}
      onInput={(e) => set((e.target as HTMLInputElement).value)} />;
  } else if (s.type === "array" && ["string", "number", "integer"].includes(s.items?.type)) {
    input = <input type="text" name={path} size={50} placeholder="comma separated" value={(value as string) ?? ""}
      onInput={(e) => set((e.target as HTMLInputElement).value)} />;
  } else {
    input = <textarea name={path} rows={2} placeholder={def === undefined ? "JSON" : JSON.stringify(def)}
      value={(value as string) ?? ""} onInput={(e) => set((e.target as HTMLTextAreaElement).value)} />;
  }
  return (
    <div class="form-field" data-field={path}>
      <label for={path}>{label}</label>
      {input}
      {s.description && <div class="help">{s.description}</div>}
    </div>
  );
}
