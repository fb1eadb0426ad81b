// Search, facets, sort and pagination over the registry; tags editable in place; pick runs to compare.
import { useEffect, useState } from "preact/hooks";
import { get, post, qs } from "../api";
import { Card, ErrorBox, go } from "../ui";
import { duration, num, when, NA } from "../format";

const PAGE = 50;
const FACETS = ["status", "method", "backend", "tag"];

export function Runs({ query }: { query: URLSearchParams }) {
  const filters: Record<string, string[]> = {};
  for (const f of FACETS) filters[f] = (query.get(f) ?? "").split(",").filter(Boolean);
  const text = query.get("text") ?? "";
  const sort = query.get("sort") ?? "-created_at";
  const offset = Number(query.get("offset") ?? 0);
  const [page, setPage] = useState<any>(null);
  const [error, setError] = useState<string | null>(null);
  const [selected, setSelected] = useState<string[]>([]);
  const [textDraft, setTextDraft] = useState(text);
  const key = query.toString();
  const load = () => {
    const t0 = performance.now();
    get(`/api/v1/runs${qs({ ...filters, text, sort, offset, limit: PAGE, facets: true })}`)
      .then((p) => { setPage({ ...p, key, ms: performance.now() - t0 }); setError(null); })
      .catch((e) => setError(e.message));
  };
  useEffect(load, [key]);
  const update = (changes: Record<string, string | null>) => {
    const q = new URLSearchParams(query);
    for (const [k, v] of Object.entries(changes)) v ? q.set(k, v) : q.delete(k);
    if (!("offset" in changes)) q.delete("offset");
    go(`#/runs?${q.toString()}`);
  };
  const toggle = (facet: string, value: string) => {
    const cur = new Set(filters[facet]);
    cur.has(value) ? cur.delete(value) : cur.add(value);
    update({ [facet]: [...cur].join(",") || null });
  };
  const sortBy = (field: string) => update({ sort: sort === field ? `-${field}` : field });
  const pick = (id: string) =>
    setSelected((s) => (s.includes(id) ? s.filter((x) => x !== id) : s.length >= 8 ? s : [...s, id]));
  const th = (field: string, label: string) => (
    <th class="sortable" onClick={() => sortBy(field)}>
      {label}{sort === field ? " ▲" : sort === `-${field}` ? " ▼" : ""}
    </th>
  );
  return (
    <div>
      <h1>Runs</h1>
      <Card title="Filters">
        <form class="row" onSubmit={(e) => { e.preventDefault(); update({ text: textDraft || null }); }}>
          <input placeholder="search name, id, model, notes" value={textDraft} size={40} data-testid="runs-search"
            onInput={(e) => setTextDraft((e.target as HTMLInputElement).value)} />
          <button type="submit">Search</button>
          {key && <button type="button" class="secondary" onClick={() => go("#/runs")}>Clear</button>}
        </form>
        <div class="filters" data-testid="facets">
          {FACETS.map((f) => (
            <div class="facet">
              <b>{f}</b>
              {(page?.facets?.[f] ?? []).map((c: any) => (
                <label>
                  <input type="checkbox" checked={filters[f].includes(c.value)} onChange={() => toggle(f, c.value)}
                    data-testid={`facet-${f}-${c.value}`} /> {c.value} <span class="muted">({c.count})</span>
                </label>
              ))}
            </div>
          ))}
        </div>
      </Card>
      <ErrorBox error={error} />
      <Card title={page ? `${page.total} runs` : "Runs"} testid="runs-table">
        <div class="row">
          <button disabled={selected.length < 2} onClick={() => go(`#/compare?ids=${selected.join(",")}`)}
            data-testid="compare-selected">Compare {selected.length || ""} selected</button>
          <span class="muted">{selected.length >= 8 ? "at most 8 runs" : "pick 2–8 runs"}</span>
        </div>
        <table data-key={page?.key ?? ""}>
          <thead>
            <tr>
              <th />{th("name", "run")}{th("method", "method")}{th("base_model", "model")}{th("status", "status")}
              {th("created_at", "created")}{th("duration_s", "duration")}{th("last_step", "step")}
              <th>loss</th><th>tags</th>
            </tr>
          </thead>
          <tbody>
            {page?.items.map((r: any) => (
              <tr data-run={r.run_id}>
                <td><input type="checkbox" checked={selected.includes(r.run_id)} onChange={() => pick(r.run_id)} /></td>
                <td><a href={`#/runs/${r.run_id}`}>{r.name ?? r.run_id}</a><br /><span class="muted">{r.run_id}</span></td>
                <td>{r.method}</td><td>{r.base_model ?? <span class="na">{NA}</span>}</td>
                <td class={`status-${r.status}`}>{r.status}</td><td>{when(r.created_at)}</td>
                <td>{duration(r.duration_s)}</td>
                <td>{r.last_step ?? <span class="na">{NA}</span>} / {r.total_steps ?? NA}</td>
                <td>{num(r.last_metrics?.loss)}</td>
                <td><Tags run={r} onSaved={load} /></td>
              </tr>
            ))}
          </tbody>
        </table>
        {page && (
          <div class="row">
            <button class="secondary" disabled={offset === 0}
              onClick={() => update({ offset: String(Math.max(0, offset - PAGE)) })}>Previous</button>
            <span>{page.total ? `${offset + 1}–${Math.min(offset + PAGE, page.total)} of ${page.total}` : "no runs"}</span>
            <button class="secondary" disabled={offset + PAGE >= page.total}
              onClick={() => update({ offset: String(offset + PAGE) })}>Next</button>
          </div>
        )}
      </Card>
    </div>
  );
}

export function Tags({ run, onSaved }: { run: any; onSaved: () => void }) {
  const [draft, setDraft] = useState("");
  const [error, setError] = useState<string | null>(null);
  const change = async (body: { add?: string[]; remove?: string[] }) => {
    try {
      await post(`/api/v1/runs/${run.run_id}/tags`, body);
      setError(null);
      onSaved();
    } catch (e: any) {
      setError(e.message);
    }
  };
  return (
    <div>
      {run.tags.map((t: string) => (
        <span class="pill">{t}<button title="remove tag" onClick={() => change({ remove: [t] })}>×</button></span>
      ))}
      <form onSubmit={(e) => { e.preventDefault(); if (draft) change({ add: [draft] }); setDraft(""); }}>
        <input size={8} placeholder="+ tag" value={draft} onInput={(e) => setDraft((e.target as HTMLInputElement).value)} />
      </form>
      <ErrorBox error={error} />
    </div>
  );
}
