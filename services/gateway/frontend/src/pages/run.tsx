// One run: live curves over SSE (history first, then live until it finishes), status, cancel, RAFT cycle and
// stage progress (live) and per-cycle table (summary), before/after samples, artifacts, evals, cost, replay
// command, bundle download, notes and tags; the tail of the run's own log (logs/train.log).
import { useEffect, useRef, useState } from "preact/hooks";
import { get, post, sse } from "../api";
import { Card, Chart, ErrorBox } from "../ui";
import { bytes, duration, num, show, when, NA } from "../format";
import { Tags } from "./runs";

const LOG_LINES = 200;
const FIRST = ["loss", "eval_loss", "reward", "reward_mean", "learning_rate", "lr", "tokens_per_second", "grad_norm"];
type Curves = Record<string, Map<number, number>>;
/** ``raft_stage`` codes in a RAFT run's metrics rows (trainer-torch recipes/raft.py STAGE_CODES): the stage the row closes. */
const RAFT_STAGES = ["generate", "verify", "select", "train"];
type RaftLive = { cycle: number | null; stage: number | null; cycles: number | null };

export function RunDetail({ runId }: { runId: string }) {
  const [detail, setDetail] = useState<any>(null);
  const [detailError, setDetailError] = useState<string | null>(null);
  const [curves, setCurves] = useState<Curves>({});
  const [live, setLive] = useState<{ state: string; step: number | null; total: number | null; jobId: string | null;
    error: string | null; method: string | null }>({ state: "unknown", step: null, total: null, jobId: null,
    error: null, method: null });
  const [streamError, setStreamError] = useState<string | null>(null);
  const [actionError, setActionError] = useState<string | null>(null);
  const [replay, setReplay] = useState<string | null>(null);
  const seen = useRef(new Set<string>());
  const [log, setLog] = useState<string[]>([]);
  const [raft, setRaft] = useState<RaftLive>({ cycle: null, stage: null, cycles: null });

  const loadDetail = () =>
    get(`/api/v1/runs/${runId}`).then((d) => { setDetail(d); setDetailError(null); return d; })
      .catch((e) => { setDetailError(e.status === 404 ? null : e.message); return null; });

  useEffect(() => {
    setCurves({});
    setLog([]);
    setRaft({ cycle: null, stage: null, cycles: null });
    seen.current = new Set();
    loadDetail();
    get(`/api/v1/runs/${runId}/metrics?max_points=2000`).then((m) => setCurves((c) => {
      const next = { ...c };
      for (const s of m.series) {
        const map = new Map(next[s.name] ?? []);
        s.steps.forEach((st: number, i: number) => map.set(st, s.values[i]));
        next[s.name] = map;
      }
      setRaft((r) => r.cycle !== null ? r : { ...r, ...lastRaft(m.series) });
      return next;
    })).catch(() => undefined); // not in the registry yet: the live stream fills the curves
    const close = sse(`/api/v1/runs/${runId}/events`, (ev) => {
      const m = ev.message ?? {};
      const id = `${ev.type}:${m.seq}:${m.service}`;
      if (seen.current.has(id)) return;
      seen.current.add(id);
      setLog((l) => [...l.slice(-(LOG_LINES - 1)), logLine(ev.type, m)]);
      if (ev.type === "started") {
        setLive((l) => ({ ...l, state: "running", total: m.total_steps ?? l.total, jobId: m.job_id ?? l.jobId,
          method: m.method }));
        if (typeof m.spec?.cycles === "number") setRaft((r) => ({ ...r, cycles: m.spec.cycles }));
      } else if (ev.type === "progressed") {
        setLive((l) => ({ ...l, state: l.state === "unknown" ? "running" : l.state, step: m.step,
          total: m.total_steps ?? l.total, jobId: m.job_id ?? l.jobId }));
        const mm = m.metrics ?? {};
        if (typeof mm.raft_stage === "number" || typeof mm.cycle === "number") {
          setRaft((r) => ({ ...r, cycle: typeof mm.cycle === "number" ? mm.cycle : r.cycle,
            stage: typeof mm.raft_stage === "number" ? mm.raft_stage : r.stage }));
        }
        setCurves((c) => {
          const next = { ...c };
          for (const [k, v] of Object.entries(m.metrics ?? {})) {
            if (typeof v !== "number") continue;
            const map = new Map(next[k] ?? []);
            map.set(m.step, v);
            next[k] = map;
          }
          return next;
        });
      } else if (ev.type === "finished") {
        setLive((l) => ({ ...l, state: m.state, error: m.error ?? null }));
        setTimeout(loadDetail, 1000); // the registry records the finish a moment later
      }
    }, { isLast: (ev) => ev.type === "finished", onError: setStreamError });
    return close;
  }, [runId]);

  // A run just launched is not in the registry yet: look again until it is.
  useEffect(() => {
    if (detail) return;
    const t = setInterval(loadDetail, 2000);
    return () => clearInterval(t);
  }, [detail, runId]);

  const run = detail?.run;
  const state = live.state !== "unknown" ? live.state : run?.status ?? "unknown";
  const jobId = live.jobId ?? run?.job_id ?? null;
  const active = state === "running" || state === "queued";
  const names = Object.keys(curves).sort((a, b) => rank(a) - rank(b) || a.localeCompare(b)).slice(0, 9);

  const cancel = async () => {
    try {
      const s = await post(`/api/v1/jobs/${jobId}/cancel`);
      setLive((l) => ({ ...l, state: s.state === "running" ? "cancelling" : s.state }));
      setActionError(null);
    } catch (e: any) {
      setActionError(e.message);
    }
  };
  const showReplay = async () => {
    try {
      setReplay((await get(`/api/v1/runs/${runId}/replay`)).command);
    } catch (e: any) {
      setActionError(e.message);
    }
  };
  return (
    <div>
      <h1>{run?.name ?? runId}</h1>
      <Card title="Status" testid="run-status">
        <div class="row">
          <span class={`status-${state}`} data-testid="run-state">{state}</span>
          <span data-testid="run-step">step {live.step ?? run?.last_step ?? NA} / {live.total ?? run?.total_steps ?? NA}</span>
          <span>{run?.method ?? live.method ?? ""}</span>
          <span>{run?.base_model ?? ""}</span>
          <span>{run ? duration(run.duration_s) : ""}</span>
          {jobId && active && <button class="danger" onClick={cancel} data-testid="cancel">Cancel</button>}
          <a class="button secondary" href={`/api/v1/runs/${runId}/bundle`} download>Download bundle</a>
          {detail?.has_replay && <button class="secondary" onClick={showReplay}>Replay command</button>}
        </div>
        {live.error && <div class="error">{live.error}</div>}
        {run?.error && !live.error && <div class="error">{run.error}</div>}
        {replay && <pre data-testid="replay">{replay}</pre>}
        <ErrorBox error={actionError ?? streamError ?? detailError} />
        {!detail && !detailError && <p class="muted">Not in the registry yet; showing the live stream.</p>}
      </Card>
      {(raft.stage !== null || (run?.method ?? live.method) === "raft" || detail?.summary?.extras?.cycles) && (
        <RaftProgress raft={raft} cycles={raft.cycles ?? detail?.spec?.cycles ?? null} state={state}
          rows={detail?.summary?.extras?.cycles ?? null} />
      )}
      {Array.isArray(detail?.summary?.extras?.samples) && detail.summary.extras.samples.length > 0 && (
        <Samples samples={detail.summary.extras.samples} />
      )}
      <Card title="Curves" testid="curves">
        {names.length === 0 && <p class="muted">No metrics yet.</p>}
        <div class="grid2">
          {names.map((n) => {
            const map = curves[n];
            const steps = [...map.keys()].sort((a, b) => a - b);
            return <Chart title={n} testid={`chart-${n}`} series={[{ label: n, steps, values: steps.map((s) => map.get(s)!) }]} />;
          })}
        </div>
      </Card>
      <Card title={`Event log (last ${LOG_LINES})`} testid="event-log">
        {log.length === 0 ? <p class="muted">No event yet.</p> : <pre class="log">{log.join("\n")}</pre>}
      </Card>
      <RunLog runId={runId} active={active} />
      {detail && <Details detail={detail} runId={runId} onSaved={loadDetail} />}
    </div>
  );
}

/** The tail of the run's ``logs/train.log`` (``GET /api/v1/runs/{id}/logs``): every 2 s while the run is active,
 * once more when it stops; scrolled to the end. */
function RunLog({ runId, active }: { runId: string; active: boolean }) {
  const [lines, setLines] = useState<string[] | null>(null);
  const [error, setError] = useState<string | null>(null);
  const pre = useRef<HTMLPreElement>(null);
  useEffect(() => {
    let stop = false;
    const load = () => get(`/api/v1/runs/${runId}/logs?lines=${LOG_LINES}`)
      .then((r) => { if (!stop) { setLines(r.lines); setError(null); } })
      .catch((e) => { if (!stop) { if (e.status === 404) setLines(null); setError(e.status === 404 ? null : e.message); } });
    load();
    const t = active ? setInterval(load, 2000) : undefined;
    return () => { stop = true; if (t) clearInterval(t); };
  }, [runId, active]);
  useEffect(() => {
    if (pre.current) pre.current.scrollTop = pre.current.scrollHeight;
  }, [lines]);
  return (
    <Card title={`Log (last ${LOG_LINES} lines of logs/train.log)`} testid="run-log">
      {lines === null || lines.length === 0 ? <p class="muted">No log yet.</p>
        : <pre class="log" ref={pre} data-testid="run-log-text">{lines.join("\n")}</pre>}
      <ErrorBox error={error} />
    </Card>
  );
}

/** The newest cycle and stage in stored metrics series (``{name, steps, values}``): the last point of each. */
function lastRaft(series: { name: string; steps: number[]; values: number[] }[]): Partial<RaftLive> {
  const last = (name: string) => {
    const s = series.find((x) => x.name === name);
    return s && s.values.length ? s.values[s.values.length - 1] : null;
  };
  const stage = last("raft_stage");
  return stage === null ? {} : { cycle: last("cycle"), stage };
}

function stageName(code: number | null): string {
  return code === null ? NA : RAFT_STAGES[code - 1] ?? `stage ${code}`;
}

/** RAFT: where the run is (cycle k of N, the last stage finished) and, from the summary, one row per cycle. */
function RaftProgress({ raft, cycles, state, rows }: { raft: RaftLive; cycles: number | null; state: string;
  rows: any[] | null }) {
  const done = (i: number) => raft.stage !== null && i + 1 <= raft.stage;
  return (
    <Card title="RAFT cycles" testid="raft">
      <div class="row">
        <span data-testid="raft-cycle">cycle {raft.cycle === null ? NA : num(raft.cycle)} / {cycles === null ? NA : cycles}</span>
        <span data-testid="raft-stage">last stage finished: {stageName(raft.stage)}</span>
        <span class="row">{RAFT_STAGES.map((s, i) => (
          <span class={`pill ${done(i) ? "status-succeeded" : "muted"}`} data-stage={s} data-done={done(i) ? "1" : "0"}>
            {i + 1}. {s}</span>
        ))}</span>
      </div>
      {rows === null || !Array.isArray(rows) ? (
        <p class="muted">{state === "running" || state === "queued" ? "The per-cycle table appears when the run finishes."
          : "No per-cycle summary (unavailable)."}</p>
      ) : (
        <table data-testid="raft-cycles">
          <thead><tr><th>cycle</th><th>prompts</th><th>samples</th><th>reward mean</th><th>pass rate</th>
            <th>threshold</th><th>keep fraction</th><th>eligible</th><th>kept</th><th>trained</th><th>steps</th>
            <th>learning rate</th><th>loss first → last</th><th>note</th></tr></thead>
          <tbody>{rows.map((r: any) => (
            <tr data-cycle={r.cycle}>
              <td>{show(r.cycle)}</td><td>{num(r.prompts)}</td><td>{num(r.samples)}</td><td>{num(r.reward_mean)}</td>
              <td>{num(r.pass_rate)}</td><td>{num(r.threshold)}</td><td>{num(r.keep_fraction)}</td>
              <td>{num(r.eligible)}</td><td data-testid="raft-kept">{num(r.kept)}</td>
              <td>{r.trained === null || r.trained === undefined ? NA : r.trained ? "yes" : "no"}</td>
              <td>{num(r.steps)}</td><td>{num(r.learning_rate)}</td>
              <td>{num(r.loss_first)} → {num(r.loss_last)}</td><td>{r.why ?? ""}</td>
            </tr>
          ))}</tbody>
        </table>
      )}
    </Card>
  );
}

/** The summary's ``extras.samples``: each sample prompt's completion before and after training. */
function Samples({ samples }: { samples: any[] }) {
  return (
    <Card title="Samples before / after" testid="samples">
      <table>
        <thead><tr><th>prompt</th><th>before</th><th>after</th></tr></thead>
        <tbody>{samples.map((s: any) => (
          <tr data-testid="sample-row"><td><pre>{show(s.prompt)}</pre></td><td><pre>{show(s.before)}</pre></td>
            <td><pre>{show(s.after)}</pre></td></tr>
        ))}</tbody>
      </table>
    </Card>
  );
}

/** One line of the event log: time, type and what the event says (metrics of a progress event). */
function logLine(type: string, m: any): string {
  const t = m.ts ? new Date(m.ts).toLocaleTimeString() : "";
  let what: string;
  if (type === "progressed") {
    what = `step ${m.step}${m.total_steps ? `/${m.total_steps}` : ""} ` +
      Object.entries(m.metrics ?? {}).map(([k, v]) => `${k}=${typeof v === "number" ? num(v) : show(v)}`).join(" ");
  } else if (type === "started") {
    what = `${m.method ?? ""} ${m.base_model ?? ""} on ${m.backend ?? NA}${m.resumed_from_step ? `, resumed from step ${m.resumed_from_step}` : ""}`;
  } else if (type === "finished") {
    what = `${m.state}${m.error ? `: ${m.error}` : ""}`;
  } else if (type === "checkpointed") {
    what = `step ${m.step} -> ${m.path}`;
  } else if (type === "artifact-added" || type === "artifact_added") {
    what = `${m.kind} (${m.format}) ${m.path}`;
  } else {
    const { seq, ts, run_id, job_id, service, ...rest } = m;
    what = JSON.stringify(rest).slice(0, 300);
  }
  return `${t} ${type.padEnd(12)} ${what}`;
}

function rank(name: string): number {
  const i = FIRST.indexOf(name);
  return i < 0 ? FIRST.length : i;
}

function Details({ detail, runId, onSaved }: { detail: any; runId: string; onSaved: () => void }) {
  const [notes, setNotes] = useState(detail.notes ?? "");
  const [msg, setMsg] = useState<string | null>(null);
  const [error, setError] = useState<string | null>(null);
  const saveNotes = async () => {
    try {
      await post(`/api/v1/runs/${runId}/notes`, { notes });
      setMsg("saved");
      setError(null);
      onSaved();
    } catch (e: any) {
      setError(e.message);
    }
  };
  const cost = detail.cost;
  return (
    <div class="grid2">
      <Card title="Notes and tags">
        <textarea rows={4} value={notes} onInput={(e) => setNotes((e.target as HTMLTextAreaElement).value)}
          data-testid="notes" />
        <div class="row"><button onClick={saveNotes}>Save notes</button><span class="muted">{msg}</span></div>
        <ErrorBox error={error} />
        <Tags run={detail.run} onSaved={onSaved} />
      </Card>
      <Card title="Cost">
        <table><tbody>
          <tr><th>energy</th><td>{cost.kwh === null ? <span class="na">{NA}</span> : `${num(cost.kwh)} kWh`}</td></tr>
          <tr><th>cost</th><td>{cost.cost === null ? <span class="na">{NA}</span> : `${num(cost.cost)} ${cost.currency}`}</td></tr>
          <tr><th>average power</th><td>{cost.avg_watts === null ? <span class="na">{NA}</span> : `${num(cost.avg_watts)} W`}</td></tr>
          <tr><th>source</th><td>{cost.source} ({cost.samples} samples)</td></tr>
        </tbody></table>
      </Card>
      <Card title="Evaluations" testid="evals">
        {detail.evals.length === 0 ? <p class="muted">No evaluation recorded.</p> : (
          <table>
            <thead><tr><th>task</th><th>metric</th><th>value</th><th>± stderr</th><th>samples</th></tr></thead>
            <tbody>{detail.evals.map((e: any) => (
              <tr><td>{e.task}</td><td>{e.metric}</td><td>{num(e.value)}</td><td>{num(e.stderr)}</td><td>{show(e.num_samples)}</td></tr>
            ))}</tbody>
          </table>
        )}
      </Card>
      <Card title="Artifacts" testid="artifacts">
        {detail.artifacts.length === 0 ? <p class="muted">No artifact yet.</p> : (
          <table>
            <thead><tr><th>kind</th><th>format</th><th>step</th><th>size</th><th>path</th></tr></thead>
            <tbody>{detail.artifacts.map((a: any) => (
              <tr><td>{a.kind}</td><td>{a.format}</td><td>{show(a.step)}</td><td>{bytes(a.size_bytes)}</td><td><code>{a.path}</code></td></tr>
            ))}</tbody>
          </table>
        )}
      </Card>
      <Card title="Spec">
        <pre>{JSON.stringify(detail.spec, null, 2)}</pre>
      </Card>
      <Card title="Summary">
        <p class="muted">created {when(detail.run.created_at)} · finished {when(detail.run.finished_at)} · {detail.run_dir}</p>
        <pre>{JSON.stringify(detail.summary, null, 2)}</pre>
      </Card>
    </div>
  );
}
