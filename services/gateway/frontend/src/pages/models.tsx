// Served models: list, load, unload; a playground chat streaming from /v1/chat/completions; convert (hf | gguf |
// mlx x quant), merge-bake and merge-combine jobs on serve, followed over the run's event stream.
import { useEffect, useState } from "preact/hooks";
import { del, errorOf, get, headersFor, post, sse } from "../api";
import { Card, ErrorBox, useApi } from "../ui";
import { bytes, duration, num, NA } from "../format";

export function Models() {
  const list = useApi("/api/v1/serve/models");
  const [form, setForm] = useState({ id: "", model: "", adapter: "" });
  const [error, setError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);
  const load = async (e: Event) => {
    e.preventDefault();
    setBusy(true);
    try {
      const body: any = { model: form.model };
      if (form.id) body.id = form.id;
      if (form.adapter) body.adapter = form.adapter;
      await post("/api/v1/serve/models", body);
      setError(null);
      list.reload();
    } catch (err: any) {
      setError(err.message);
    } finally {
      setBusy(false);
    }
  };
  const unload = async (id: string) => {
    try {
      await del(`/api/v1/serve/models/${encodeURIComponent(id)}`);
      list.reload();
    } catch (err: any) {
      setError(err.message);
    }
  };
  const models = list.data?.models ?? [];
  const set = (k: string) => (e: Event) => setForm({ ...form, [k]: (e.target as HTMLInputElement).value });
  return (
    <div>
      <h1>Models</h1>
      <Card title="Served models" testid="served">
        <ErrorBox error={list.error} />
        {list.data && (
          <p class="muted">memory {bytes(list.data.memory_bytes)} of {list.data.memory_budget_bytes === null ? NA :
            bytes(list.data.memory_budget_bytes)}</p>
        )}
        <table>
          <thead><tr><th>id</th><th>base</th><th>format</th><th>backend</th><th>loaded</th><th>memory</th><th /></tr></thead>
          <tbody>{models.map((m: any) => (
            <tr data-model={m.id}><td>{m.id}</td><td>{m.base ?? NA}</td><td>{m.format ?? NA}</td><td>{m.backend ?? NA}</td>
              <td data-testid="model-loaded">{m.loaded ? "yes" : "no"}</td><td>{bytes(m.memory_bytes)}</td>
              <td><button class="secondary" disabled={!m.loaded} onClick={() => unload(m.id)}>Unload</button></td></tr>
          ))}</tbody>
        </table>
        <form class="row" onSubmit={load}>
          <input placeholder="model (path, hub id or tiny://llama)" value={form.model} onInput={set("model")} size={36} />
          <input placeholder="adapter (optional)" value={form.adapter} onInput={set("adapter")} />
          <input placeholder="id (optional)" value={form.id} onInput={set("id")} />
          <button type="submit" disabled={busy || !form.model}>{busy ? "Loading…" : "Load"}</button>
        </form>
        <ErrorBox error={error} />
      </Card>
      <Playground models={models.map((m: any) => m.id)} onDone={list.reload} />
      <div class="grid2">
        <Convert models={models} />
        <Bake />
      </div>
      <Combine />
    </div>
  );
}

function Playground({ models, onDone }: { models: string[]; onDone: () => void }) {
  const [model, setModel] = useState("");
  const [input, setInput] = useState("");
  const [chat, setChat] = useState<{ role: string; content: string }[]>([]);
  const [error, setError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);
  const send = async (e: Event) => {
    e.preventDefault();
    const messages = [...chat, { role: "user", content: input }];
    setChat([...messages, { role: "assistant", content: "" }]);
    setInput("");
    setBusy(true);
    setError(null);
    try {
      const r = await fetch("/v1/chat/completions", {
        method: "POST", headers: headersFor("POST", true), credentials: "same-origin",
        body: JSON.stringify({ model: model || models[0], messages, stream: true, max_tokens: 256 }),
      });
      if (!r.ok || !r.body) throw await errorOf(r);
      const reader = r.body.getReader();
      const dec = new TextDecoder();
      let buf = "", text = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += dec.decode(value, { stream: true });
        let i;
        while ((i = buf.indexOf("\n")) >= 0) {
          const line = buf.slice(0, i).trim();
          buf = buf.slice(i + 1);
          if (!line.startsWith("data:") || line === "data: [DONE]") continue;
          const delta = JSON.parse(line.slice(5)).choices?.[0]?.delta?.content;
          if (delta) {
            text += delta;
            setChat([...messages, { role: "assistant", content: text }]);
          }
        }
      }
    } catch (err: any) {
      setError(err.message);
    } finally {
      setBusy(false);
      onDone(); // the model may have been loaded for this request
    }
  };
  return (
    <Card title="Playground" testid="playground">
      <div class="row">
        <label>model <select value={model} onChange={(e) => setModel((e.target as HTMLSelectElement).value)}>
          {models.map((m) => <option value={m}>{m}</option>)}
        </select></label>
        <button class="secondary" onClick={() => setChat([])}>Clear</button>
      </div>
      <div class="chat">
        {chat.map((m) => <div class="msg" data-role={m.role}><span class="role">{m.role}</span>{m.content}</div>)}
      </div>
      <form class="row" onSubmit={send}>
        <input size={80} value={input} placeholder="Say something" onInput={(e) => setInput((e.target as HTMLInputElement).value)} />
        <button type="submit" disabled={busy || !input || models.length === 0}>Send</button>
      </form>
      {models.length === 0 && <p class="muted">Load a model first.</p>}
      <ErrorBox error={error} />
    </Card>
  );
}

const FORMATS = ["hf", "gguf", "mlx"];
const QUANTS: Record<string, string[]> = { hf: ["fp32", "fp16", "bf16"], gguf: ["fp32", "fp16", "bf16", "q8", "q4"],
  mlx: ["fp32", "fp16", "bf16", "q8", "q4"] };

/** Submit a job body to ``path``; returns the submitted ids or sets the API's message as the error. */
async function submitJob(path: string, body: any, setError: (e: string | null) => void): Promise<Job | null> {
  try {
    const r = await post(path, body);
    setError(null);
    return { jobId: r.job_id, runId: r.run_id };
  } catch (err: any) {
    setError(err.message);
    return null;
  }
}

type Job = { jobId: string; runId: string };

/** Convert a served model's weights, any path, Hub id or ``run:<id>`` to hf | gguf | mlx at a quantization. */
function Convert({ models }: { models: any[] }) {
  const formats = useApi("/api/v1/convert/formats");
  const [form, setForm] = useState({ source: "", format: "gguf", quant: "fp16", out: "", verify: true, overwrite: false });
  const [error, setError] = useState<string | null>(null);
  const [job, setJob] = useState<Job | null>(null);
  const avail: Record<string, string | null> | undefined = formats.data?.formats?.[form.format];
  const why = avail ? avail[form.quant] : undefined;
  const set = (k: string) => (e: Event) => {
    const v = (e.target as HTMLInputElement).value;
    setForm((f) => {
      const next = { ...f, [k]: v };
      if (k === "format" && !QUANTS[v].includes(next.quant)) next.quant = QUANTS[v][0];
      return next;
    });
  };
  const submit = async (e: Event) => {
    e.preventDefault();
    const body: any = { source: form.source.trim(), format: form.format, quant: form.quant, verify: form.verify };
    if (form.out.trim()) body.out = form.out.trim();
    if (form.overwrite) body.overwrite = true;
    setJob(await submitJob("/api/v1/convert", body, setError));
  };
  const sources = models.filter((m: any) => m.path).map((m: any) => m.path as string);
  return (
    <Card title="Convert" testid="convert">
      <form onSubmit={submit}>
        <div class="row">
          <input name="source" list="convert-sources" size={40} placeholder="source: served model path, dir, hub id or run:<id>"
            value={form.source} onInput={set("source")} />
          <datalist id="convert-sources">{sources.map((p) => <option value={p} />)}</datalist>
          {sources.length > 0 && (
            <select name="served" onChange={(e) => setForm((f) => ({ ...f, source: (e.target as HTMLSelectElement).value }))}>
              <option value="">served model…</option>
              {models.filter((m: any) => m.path).map((m: any) => <option value={m.path}>{m.id}</option>)}
            </select>
          )}
        </div>
        <div class="row">
          <label>format <select name="format" value={form.format} onChange={set("format")}>
            {FORMATS.map((f) => <option value={f}>{f}</option>)}</select></label>
          <label>quant <select name="quant" value={form.quant} onChange={set("quant")}>
            {QUANTS[form.format].map((q) => <option value={q}>{q}{avail && avail[q] ? " (unavailable)" : ""}</option>)}
          </select></label>
          <label><input type="checkbox" checked={form.verify}
            onChange={(e) => setForm((f) => ({ ...f, verify: (e.target as HTMLInputElement).checked }))} /> verify</label>
          <label><input type="checkbox" checked={form.overwrite}
            onChange={(e) => setForm((f) => ({ ...f, overwrite: (e.target as HTMLInputElement).checked }))} /> overwrite</label>
        </div>
        <div class="row">
          <input name="out" size={40} placeholder="output path (optional; default under HALO_HOME/models)" value={form.out}
            onInput={set("out")} />
          <button type="submit" data-testid="convert-submit" disabled={!form.source.trim()}>Convert</button>
        </div>
      </form>
      {why && <p class="muted" data-testid="convert-why">{form.format} {form.quant} is not available on serve's host: {why}</p>}
      <ErrorBox error={error ?? formats.error} />
      {job && <JobProgress job={job} testid="convert-job" />}
    </Card>
  );
}

/** Bake one adapter (path or ``run:<id>``) into its base: an HF checkpoint. */
function Bake() {
  const [form, setForm] = useState({ adapter: "", base: "", dtype: "fp32", out: "" });
  const [error, setError] = useState<string | null>(null);
  const [job, setJob] = useState<Job | null>(null);
  const set = (k: string) => (e: Event) => setForm({ ...form, [k]: (e.target as HTMLInputElement).value });
  const submit = async (e: Event) => {
    e.preventDefault();
    const body: any = { adapter: form.adapter.trim(), dtype: form.dtype };
    if (form.base.trim()) body.base = form.base.trim();
    if (form.out.trim()) body.out = form.out.trim();
    setJob(await submitJob("/api/v1/merge/bake", body, setError));
  };
  return (
    <Card title="Merge: bake an adapter" testid="bake">
      <form onSubmit={submit}>
        <div class="row">
          <input name="adapter" size={40} placeholder="adapter dir or run:<id>" value={form.adapter} onInput={set("adapter")} />
          <input name="base" placeholder="base (optional)" value={form.base} onInput={set("base")} />
        </div>
        <div class="row">
          <label>dtype <select name="dtype" value={form.dtype} onChange={set("dtype")}>
            {["fp32", "fp16", "bf16"].map((d) => <option value={d}>{d}</option>)}</select></label>
          <input name="out" size={30} placeholder="output dir (optional)" value={form.out} onInput={set("out")} />
          <button type="submit" disabled={!form.adapter.trim()}>Bake</button>
        </div>
      </form>
      <ErrorBox error={error} />
      {job && <JobProgress job={job} testid="bake-job" />}
    </Card>
  );
}

const METHODS = ["linear", "ties", "dare_linear", "dare_ties", "magnitude_prune"];

/** Combine N adapters of one base (paths or ``run:<id>``, one per line) into one adapter, optionally baked. */
function Combine() {
  const [form, setForm] = useState({ adapters: "", method: "linear", weights: "", density: "", svd_rank: "", base: "",
    out: "", bake: false, overwrite: false });
  const [error, setError] = useState<string | null>(null);
  const [job, setJob] = useState<Job | null>(null);
  const set = (k: string) => (e: Event) => setForm({ ...form, [k]: (e.target as HTMLInputElement).value });
  const check = (k: string) => (e: Event) => setForm({ ...form, [k]: (e.target as HTMLInputElement).checked });
  const adapters = form.adapters.split("\n").map((a) => a.trim()).filter(Boolean);
  const sparse = form.method !== "linear"; // density applies to ties | dare_* | magnitude_prune
  const submit = async (e: Event) => {
    e.preventDefault();
    const body: any = { adapters, method: form.method };
    const weights = form.weights.split(/[\s,]+/).filter(Boolean);
    if (weights.length) {
      const w = weights.map(Number);
      if (w.some((x) => !Number.isFinite(x))) {
        setError(`weights must be numbers: ${form.weights}`);
        return;
      }
      body.weights = w; // the API says when the count differs from the adapters'
    }
    if (sparse && form.density.trim()) body.density = Number(form.density);
    if (form.svd_rank.trim()) body.svd_rank = Number(form.svd_rank);
    if (form.base.trim()) body.base = form.base.trim();
    if (form.out.trim()) body.out = form.out.trim();
    if (form.bake) body.bake = true;
    if (form.overwrite) body.overwrite = true;
    setJob(await submitJob("/api/v1/merge/combine", body, setError));
  };
  return (
    <Card title="Merge: combine adapters" testid="combine">
      <form onSubmit={submit}>
        <div class="row">
          <textarea name="adapters" rows={3} cols={60} placeholder={"adapter dirs or run:<id>, one per line (same base)"}
            value={form.adapters} onInput={set("adapters")} />
        </div>
        <div class="row">
          <label>method <select name="method" value={form.method} onChange={set("method")}>
            {METHODS.map((m) => <option value={m}>{m}</option>)}</select></label>
          <input name="weights" size={20} placeholder={`weights (default 1/${adapters.length || "N"} each)`}
            value={form.weights} onInput={set("weights")} />
          <input name="density" type="number" step="0.05" min="0" max="1" style={{ width: "11em" }} disabled={!sparse}
            placeholder={sparse ? "density (0.5)" : "density (not linear)"} value={form.density} onInput={set("density")} />
          <input name="svd_rank" type="number" min="1" style={{ width: "11em" }} placeholder="SVD rank (optional)" value={form.svd_rank}
            onInput={set("svd_rank")} />
        </div>
        <div class="row">
          <input name="base" placeholder="base (optional)" value={form.base} onInput={set("base")} />
          <input name="out" size={30} placeholder="output dir (optional)" value={form.out} onInput={set("out")} />
          <label><input type="checkbox" name="bake" checked={form.bake} onChange={check("bake")} /> bake into the base</label>
          <label><input type="checkbox" name="overwrite" checked={form.overwrite} onChange={check("overwrite")} /> overwrite</label>
          <button type="submit" data-testid="combine-submit" disabled={adapters.length === 0}>Combine</button>
        </div>
      </form>
      <ErrorBox error={error} />
      {job && <JobProgress job={job} testid="combine-job" />}
    </Card>
  );
}

/** A convert/merge job followed over its run's events: progress, the artifact written, the result or the error. */
function JobProgress({ job, testid }: { job: Job; testid: string }) {
  const [state, setState] = useState("queued");
  const [step, setStep] = useState<{ step: number; total: number | null; elapsed: number | null } | null>(null);
  const [artifact, setArtifact] = useState<any>(null);
  const [final, setFinal] = useState<any>(null);
  const [streamError, setStreamError] = useState<string | null>(null);
  useEffect(() => {
    setState("queued");
    setStep(null);
    setArtifact(null);
    setFinal(null);
    setStreamError(null);
    return sse(`/api/v1/runs/${job.runId}/events`, (ev) => {
      const m = ev.message ?? {};
      if (ev.type === "started") setState("running");
      else if (ev.type === "progressed") {
        setState("running");
        setStep({ step: m.step, total: m.total_steps ?? null, elapsed: m.metrics?.elapsed_s ?? null });
      } else if (ev.type === "artifact-added" || ev.type === "artifact_added") setArtifact(m);
      else if (ev.type === "finished") {
        setState(m.state);
        setFinal(m);
      }
    }, { isLast: (ev) => ev.type === "finished", onError: setStreamError });
  }, [job.runId]);
  const cancel = async () => {
    try {
      await post(`/api/v1/jobs/${job.jobId}/cancel`);
    } catch (err: any) {
      setStreamError(err.message);
    }
  };
  // The stream may have ended before the finish reached this page: the job's status says where it is.
  useEffect(() => {
    if (!streamError || final) return;
    get(`/api/v1/jobs/${job.jobId}`).then((s) => setState(s.state)).catch(() => undefined);
  }, [streamError]);
  const s = final?.summary ?? {};
  const v = s.verify;
  return (
    <div data-testid={testid} data-state={state} data-run={job.runId}>
      <div class="row">
        <span class={`status-${state}`} data-testid="job-state">{state}</span>
        <span class="muted">job {job.jobId} · <a href={`#/runs/${job.runId}`}>run {job.runId}</a></span>
        {step && <span>step {step.step} / {step.total ?? NA} · {duration(step.elapsed)}</span>}
        {(state === "queued" || state === "running") && <button class="secondary" onClick={cancel}>Cancel</button>}
      </div>
      {artifact && !final && <p class="muted">{artifact.kind} written: <code>{artifact.path}</code> ({artifact.status ?? NA})</p>}
      {final && s.path && (
        <table data-testid="job-result"><tbody>
          <tr><th>output</th><td><code data-testid="job-output">{s.path}</code></td></tr>
          <tr><th>kind / format / quant</th><td>{s.kind ?? NA} / {s.format ?? NA} / {s.quant ?? NA}</td></tr>
          <tr><th>size</th><td>{bytes(s.size_bytes)}</td></tr>
          <tr><th>status</th><td data-testid="job-status">{s.status ?? NA}</td></tr>
          <tr><th>export time</th><td>{duration(s.seconds)}</td></tr>
          {v && <tr><th>verify</th><td data-testid="job-verify">{v.passed ? "passed" : "FAILED"} · top-1 agreement
            {" "}{num(v.top1_agreement)} · KL mean {num(v.kl_mean)} · greedy agreement {num(v.greedy_agreement)}
            {(v.failures ?? []).map((f: string) => <div class="error">{f}</div>)}</td></tr>}
        </tbody></table>
      )}
      {final?.error && <div class="error" role="alert">{final.error}</div>}
      <ErrorBox error={streamError && !final ? streamError : null} />
    </div>
  );
}
