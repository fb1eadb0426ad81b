// Served models: list, load, unload; a playground chat streaming from /v1/chat/completions.
import { useState } from "preact/hooks";
import { del, errorOf, headersFor, post } from "../api";
import { Card, ErrorBox, useApi } from "../ui";
import { bytes, NA } from "../format";

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
