// Services and their health, backend and devices, the live telemetry strip, active jobs.
import { useEffect, useState } from "preact/hooks";
import { get, sse } from "../api";
import { Card, Chart, ErrorBox, useApi } from "../ui";
import { bytes, duration, num, pct, NA } from "../format";

export function Overview() {
  const services = useApi<{ services: any[] }>("/api/v1/services");
  const [jobs, setJobs] = useState<any[] | null>(null);
  const [jobsError, setJobsError] = useState<string | null>(null);
  useEffect(() => {
    const load = () => get("/api/v1/jobs?limit=50").then((d) => { setJobs(d.jobs); setJobsError(null); })
      .catch((e) => setJobsError(e.message));
    load();
    const t = setInterval(load, 3000);
    return () => clearInterval(t);
  }, []);
  const active = (jobs ?? []).filter((j) => j.state === "queued" || j.state === "running");
  return (
    <div>
      <h1>Overview</h1>
      <TelemetryStrip />
      <div class="grid2">
        <Card title="Services" testid="services">
          <ErrorBox error={services.error} />
          <table>
            <thead><tr><th>service</th><th>status</th><th>backend</th><th>version</th><th>up</th><th>checks</th></tr></thead>
            <tbody>
              {services.data?.services.map((s) => (
                <tr>
                  <td>{s.name}</td>
                  <td class={s.health?.status === "ok" ? "ok" : "bad"}>{s.health?.status ?? "no answer"}</td>
                  <td>{s.health?.backend ?? s.metadata?.backend ?? <span class="na">{NA}</span>}</td>
                  <td>{s.version}</td>
                  <td>{s.health ? duration(s.health.uptime_s) : <span class="na">{NA}</span>}</td>
                  <td>{Object.entries(s.health?.checks ?? {}).map(([k, v]) => (
                    <span class={`pill ${v === "ok" ? "" : "bad"}`}>{k}: {String(v)}</span>))}</td>
                </tr>
              ))}
            </tbody>
          </table>
          <button class="secondary" onClick={services.reload}>Refresh</button>
        </Card>
        <Card title="Active jobs" testid="active-jobs">
          <ErrorBox error={jobsError} />
          {active.length === 0 && jobs !== null && <p class="muted">No queued or running job.</p>}
          <table>
            <tbody>
              {active.map((j) => (
                <tr>
                  <td><a href={`#/runs/${j.run_id}`}>{j.run_id}</a></td><td>{j.job_type}</td>
                  <td class={`status-${j.state}`}>{j.state}</td>
                  <td>{j.step ?? "–"} / {j.total_steps ?? NA}</td><td>{j.service}</td>
                </tr>
              ))}
            </tbody>
          </table>
        </Card>
      </div>
    </div>
  );
}

/** The live strip: one frame a second over SSE from the gateway's shared sampler. */
export function TelemetryStrip() {
  const [frame, setFrame] = useState<any>(null);
  const [hist, setHist] = useState<{ t: number[]; util: Record<string, number[]> }>({ t: [], util: {} });
  const [error, setError] = useState<string | null>(null);
  useEffect(() => sse("/api/v1/telemetry/stream", (f) => {
    setFrame(f);
    setHist((h) => {
      const t = [...h.t, Math.round(f.ts)].slice(-120);
      const util = { ...h.util };
      for (const d of f.devices) {
        const key = `${d.kind}${d.device}`;
        util[key] = [...(util[key] ?? []), d.utilization_ratio === null ? NaN : d.utilization_ratio * 100].slice(-120);
      }
      return { t, util };
    });
  }, { onError: setError }), []);
  return (
    <Card title="Live telemetry" testid="telemetry">
      <ErrorBox error={error} />
      {!frame && <p class="muted">Waiting for the first sample…</p>}
      <div class="strip">
        {frame?.devices.map((d: any) => (
          <div class="dev" data-testid={`device-${d.kind}-${d.device}`}>
            <b>{d.kind.toUpperCase()} {d.device} · {d.name}</b>
            utilisation {pct(d.utilization_ratio)}<br />
            memory {bytes(d.memory_used_bytes)} / {bytes(d.memory_total_bytes)}<br />
            power {d.power_watts === null ? NA : `${num(d.power_watts, 3)} W`} ·
            temperature {d.temperature_c === null ? NA : `${num(d.temperature_c, 3)} °C`}
          </div>
        ))}
        {frame?.jobs.map((j: any) => (
          <div class="dev">
            <b><a href={`#/runs/${j.run_id}`}>{j.run_id}</a></b>
            step {j.step ?? NA} / {j.total_steps ?? NA}<br />
            tokens/s {j.tokens_per_second === undefined ? NA : num(j.tokens_per_second, 4)}
          </div>
        ))}
      </div>
      {hist.t.length > 1 && (
        <Chart title="utilisation %" height={140} series={Object.entries(hist.util).map(([k, v]) => ({
          label: k, steps: hist.t.slice(-v.length), values: v }))} />
      )}
    </Card>
  );
}
