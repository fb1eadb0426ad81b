// Sweeps (read-only): the list of sweeps, and one sweep's trials with their state, parameters and objective
// value, the best trial marked, the parameter importances. Refreshes while a sweep runs.
import { useEffect } from "preact/hooks";
import { Card, ErrorBox, useApi } from "../ui";
import { num, show, when, NA } from "../format";

const ACTIVE = new Set(["queued", "running", "pending", "submitted"]);

function useRefreshWhile(active: boolean, reload: () => void, ms = 3000) {
  useEffect(() => {
    if (!active) return;
    const t = setInterval(reload, ms);
    return () => clearInterval(t);
  }, [active]);
}

function counts(c: Record<string, number> | undefined): string {
  const parts = Object.entries(c ?? {}).filter(([, n]) => n > 0).map(([s, n]) => `${n} ${s}`);
  return parts.length ? parts.join(", ") : "no trials yet";
}

export function Sweeps() {
  const list = useApi("/api/v1/sweeps?limit=200");
  const sweeps: any[] = list.data?.sweeps ?? [];
  useRefreshWhile(sweeps.some((s) => ACTIVE.has(s.state)), list.reload);
  return (
    <div>
      <h1>Sweeps</h1>
      <Card title="Sweeps" testid="sweeps">
        <ErrorBox error={list.error} />
        {list.data && sweeps.length === 0 && (
          <p class="muted">No sweeps yet: <code>halo-forge sweep create sweep.yaml</code> starts one.</p>)}
        {sweeps.length > 0 && (
          <table>
            <thead><tr><th>sweep</th><th>method</th><th>state</th><th>trials</th><th>objective</th><th>best</th>
              <th>created</th></tr></thead>
            <tbody>{sweeps.map((s) => (
              <tr data-sweep={s.sweep_id}>
                <td><a href={`#/sweeps/${s.sweep_id}`}>{s.name ?? s.sweep_id}</a><br /><span class="muted">{s.sweep_id}</span></td>
                <td>{s.method}</td><td class={`status-${s.state}`}>{s.state ?? NA}</td>
                <td>{counts(s.counts)} <span class="muted">of {s.n_trials}</span></td>
                <td>{objective(s.spec)}</td>
                <td>{s.best ? `#${s.best.number}: ${num(s.best.value)}` : <span class="na">{NA}</span>}</td>
                <td>{when(s.created_at)}</td>
              </tr>
            ))}</tbody>
          </table>
        )}
        <button class="secondary" onClick={list.reload}>Refresh</button>
      </Card>
    </div>
  );
}

function objective(spec: any): string {
  const o = spec?.objective;
  if (!o) return NA;
  return `${o.direction ?? "minimize"} ${o.metric ?? "loss"} (${o.mode ?? "final"})`;
}

export function SweepDetail({ sweepId }: { sweepId: string }) {
  const info = useApi(`/api/v1/sweeps/${encodeURIComponent(sweepId)}`);
  const s = info.data;
  useRefreshWhile(!!s && (ACTIVE.has(s.state) || s.state === null), info.reload);
  const trials: any[] = s?.trials ?? [];
  const params = Array.from(new Set(trials.flatMap((t) => Object.keys(t.params ?? {}))));
  const importances = Object.entries(s?.importances ?? {}) as [string, number][];
  return (
    <div>
      <h1>Sweep {s?.name ?? sweepId}</h1>
      <ErrorBox error={info.error} />
      {s && (
        <Card title="Summary" testid="sweep-summary">
          <p>
            <b>{s.sweep_id}</b> · {s.method} · <span class={`status-${s.state}`} data-testid="sweep-state">{s.state ?? NA}</span>
            {" "}· {counts(s.counts)} of {s.n_trials} · objective: {objective(s.spec)} · created {when(s.created_at)}
          </p>
          {s.best ? (
            <p data-testid="sweep-best">best: trial #{s.best.number} = {num(s.best.value)}
              {s.best.run_id && <> (<a href={`#/runs/${s.best.run_id}`}>{s.best.run_id}</a>)</>}</p>
          ) : <p class="na">best: {NA} (no complete trial yet)</p>}
          {s.error && <div class="error">{s.error}</div>}
        </Card>
      )}
      {s && (
        <Card title="Trials" testid="sweep-trials">
          {trials.length === 0 && <p class="muted">No trial has started yet.</p>}
          {trials.length > 0 && (
            <table>
              <thead><tr><th>#</th><th>state</th>{params.map((p) => <th>{p}</th>)}<th>objective</th><th>last step</th>
                <th>run</th></tr></thead>
              <tbody>{trials.map((t) => {
                const best = s.best && s.best.number === t.number;
                return (
                  <tr data-trial={t.number} data-best={best ? "1" : "0"}>
                    <td>{t.number}</td><td class={`status-${t.state}`}>{t.state}</td>
                    {params.map((p) => <td>{show(t.params?.[p])}</td>)}
                    <td class={best ? "best" : ""} data-testid={best ? "best-trial-value" : undefined}>
                      {t.value === null || t.value === undefined ? <span class="na">{NA}</span> : num(t.value)}{best ? " ★" : ""}
                    </td>
                    <td>{t.last_step ?? <span class="na">{NA}</span>}</td>
                    <td>{t.run_id ? <a href={`#/runs/${t.run_id}`}>{t.run_id}</a> : <span class="na">{NA}</span>}
                      {t.error && <div class="bad">{t.error}</div>}</td>
                  </tr>
                );
              })}</tbody>
            </table>
          )}
        </Card>
      )}
      {importances.length > 0 && (
        <Card title="Parameter importances">
          <table><tbody>{importances.sort((a, b) => b[1] - a[1]).map(([k, v]) => (
            <tr><td>{k}</td><td>{num(v, 3)}</td></tr>))}</tbody></table>
        </Card>
      )}
      <p><a href="#/sweeps">← all sweeps</a></p>
    </div>
  );
}
