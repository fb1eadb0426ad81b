// Launch a training run: the form is generated from the method's spec JSON Schema, the model picker comes
// from the catalog (with the running trainer's backend recommendations), preview first, then launch and go
// to the live run.
import { useEffect, useState } from "preact/hooks";
import { get, post, qs } from "../api";
import { Card, ErrorBox, go, useApi } from "../ui";
import { buildSpec, SchemaForm, type Values } from "../schemaform";

export function Train() {
  const methods = useApi<{ methods: string[] }>("/api/v1/jobs/methods");
  const [method, setMethod] = useState("sft");
  const schema = useApi(`/api/v1/jobs/${method}/schema`, [method]);
  const [values, setValues] = useState<Values>({});
  const [backend, setBackend] = useState<string | null>(null);
  const catalog = useApi(`/api/v1/models/catalog${qs({ backend, memory_gb: backend ? 16 : null })}`, [backend]);
  const [preview, setPreview] = useState<any>(null);
  const [error, setError] = useState<string | null>(null);
  const [busy, setBusy] = useState<string | null>(null);
  useEffect(() => {
    // The backend of a running trainer decides which recommendations apply.
    get("/api/v1/services").then((d) => {
      const t = d.services.find((s: any) => s.name.startsWith("trainer") && s.health?.backend);
      setBackend(t?.health?.backend ?? null);
    }).catch(() => undefined);
  }, []);
  const onChange = (path: string, v: string | boolean) => {
    setValues((vals) => ({ ...vals, [path]: v }));
    setPreview(null);
  };
  const spec = () => buildSpec(schema.data, values);
  const run = async (what: "preview" | "launch") => {
    setBusy(what);
    setError(null);
    try {
      if (what === "preview") {
        setPreview(await post(`/api/v1/jobs/${method}/preview?samples=2`, spec()));
      } else {
        const r = await post(`/api/v1/jobs/${method}`, spec());
        go(`#/runs/${r.run_id}`);
      }
    } catch (e: any) {
      setError(e.message);
    } finally {
      setBusy(null);
    }
  };
  const picked = catalog.data?.models.find((m: any) => m.id === values.model);
  const applyRecommendation = () => {
    const flat: Values = {};
    const walk = (o: any, p: string) => Object.entries(o).forEach(([k, v]) =>
      v !== null && typeof v === "object" ? walk(v, `${p}${k}.`) : (flat[`${p}${k}`] = typeof v === "boolean" ? v : String(v)));
    walk(picked.recommended, "");
    setValues((vals) => ({ ...vals, ...flat }));
  };
  return (
    <div>
      <h1>Train</h1>
      <Card title="Method">
        <div class="row">
          {(methods.data?.methods ?? ["sft"]).map((m) => (
            <label><input type="radio" name="method" checked={m === method}
              onChange={() => { setMethod(m); setValues({}); setPreview(null); }} /> {m}</label>
          ))}
        </div>
        <ErrorBox error={methods.error ?? schema.error} />
      </Card>
      <Card title="Model" testid="model-picker">
        <datalist id="catalog-models">
          {catalog.data?.tiny_models.map((m: string) => <option value={m}>local test model</option>)}
          {catalog.data?.models.map((m: any) => (
            <option value={m.id}>{m.params_b}B · {m.license}{m.supported === false ? " · not on this backend" : ""}</option>
          ))}
        </datalist>
        <p class="muted">Pick from the catalog (type to search), a local path, or a Hub id.
          {backend ? ` Recommendations for the ${backend} backend.` : " No trainer is running: no backend recommendations."}</p>
        {picked && (
          <div>
            <p><b>{picked.id}</b> — {picked.params_b}B parameters, context {picked.context_length}, {picked.license}
              {picked.gated ? " (gated)" : ""}</p>
            {picked.note && <p class={picked.supported ? "" : "bad"}>{picked.note}</p>}
            {picked.recommended ? (
              <div class="row">
                <code>{JSON.stringify(picked.recommended)}</code>
                <button class="secondary" onClick={applyRecommendation}>Apply recommendation</button>
              </div>
            ) : <p class="muted">No recommendation for this backend and memory.</p>}
          </div>
        )}
        <ErrorBox error={catalog.error} />
      </Card>
      <Card title={`${method} spec`} testid="train-form">
        {schema.data && (
          <form onSubmit={(e) => { e.preventDefault(); run("launch"); }}>
            <SchemaForm schema={schema.data} values={values} onChange={onChange} datalists={{ model: "catalog-models" }} />
            <div class="row">
              <button type="button" class="secondary" disabled={!!busy} onClick={() => run("preview")}
                data-testid="preview">{busy === "preview" ? "Checking…" : "Preview"}</button>
              <button type="submit" disabled={!!busy} data-testid="launch">{busy === "launch" ? "Launching…" : "Launch"}</button>
            </div>
          </form>
        )}
        <ErrorBox error={error} />
      </Card>
      {preview && <Preview p={preview} />}
    </div>
  );
}

function Preview({ p }: { p: any }) {
  return (
    <Card title="Preview" testid="preview-result">
      <p class={p.ok ? "ok" : "bad"}>{p.ok ? "Spec and data are valid" : "Problems found"}: format {p.format ?? "unknown"},
        {" "}{p.records} training records, {p.eval_records} eval records, backend {p.backend ?? "unknown"}.</p>
      {p.problems.map((x: string) => <div class="error">{x}</div>)}
      {p.samples.map((s: any) => (
        <div>
          <p class="muted">{s.source} · {s.num_trained_tokens}/{s.num_tokens} tokens trained{s.truncated ? " · truncated" : ""}</p>
          <pre>{s.segments.map((g: any) => <span class={g.trained ? "seg-trained" : "seg-masked"}>{g.text}</span>)}</pre>
        </div>
      ))}
      <details><summary>Resolved settings</summary><pre>{JSON.stringify(p.resolved, null, 2)}</pre></details>
    </Card>
  );
}
