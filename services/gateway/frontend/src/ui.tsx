// Small shared pieces: data loading hook, error box, hash router, the uPlot chart.
import { useEffect, useRef, useState } from "preact/hooks";
import type { ComponentChildren } from "preact";
import uPlot from "uplot";
import "uplot/dist/uPlot.min.css";
import { get } from "./api";

export function useApi<T = any>(path: string | null, deps: unknown[] = []) {
  const [data, setData] = useState<T | null>(null);
  const [error, setError] = useState<string | null>(null);
  const [loading, setLoading] = useState(false);
  const [tick, setTick] = useState(0);
  useEffect(() => {
    if (path === null) return;
    let live = true;
    setLoading(true);
    get<T>(path)
      .then((d) => live && (setData(d), setError(null)))
      .catch((e) => live && setError(String(e.message ?? e)))
      .finally(() => live && setLoading(false));
    return () => {
      live = false;
    };
  }, [path, tick, ...deps]);
  return { data, error, loading, reload: () => setTick((t) => t + 1), setData };
}

export function ErrorBox({ error }: { error: string | null | undefined }) {
  return error ? <div class="error" role="alert">{error}</div> : null;
}

export function Card({ title, children, testid }: { title: string; children: ComponentChildren; testid?: string }) {
  return (
    <section class="card" data-testid={testid}>
      <h2>{title}</h2>
      {children}
    </section>
  );
}

export interface Route {
  path: string[];
  query: URLSearchParams;
}

export function parseHash(): Route {
  const raw = location.hash.replace(/^#\/?/, "");
  const [p, q] = raw.split("?", 2);
  return { path: p ? p.split("/").map(decodeURIComponent) : [], query: new URLSearchParams(q ?? "") };
}

export function useRoute(): Route {
  const [route, setRoute] = useState(parseHash());
  useEffect(() => {
    const on = () => setRoute(parseHash());
    window.addEventListener("hashchange", on);
    return () => window.removeEventListener("hashchange", on);
  }, []);
  return route;
}

export function go(hash: string) {
  location.hash = hash;
}

const PALETTE = ["#2563eb", "#dc2626", "#16a34a", "#d97706", "#7c3aed", "#0891b2", "#db2777", "#4b5563"];

export interface Series {
  label: string;
  steps: number[];
  values: number[];
}

/** Overlaid line series on a shared step axis (series may have different steps: missing points are gaps). */
export function Chart({ title, series, height = 220, testid }: { title: string; series: Series[]; height?: number;
  testid?: string }) {
  const box = useRef<HTMLDivElement>(null);
  const plot = useRef<uPlot | null>(null);
  const shape = series.map((s) => s.label).join("|");
  useEffect(() => {
    if (!box.current) return;
    const opts: uPlot.Options = {
      title,
      width: Math.max(300, box.current.clientWidth || 600),
      height,
      scales: { x: { time: false } },
      axes: [{ label: "step" }, {}],
      series: [{ label: "step" }, ...series.map((s, i) => ({ label: s.label, stroke: PALETTE[i % PALETTE.length],
        width: 1.5, spanGaps: true }))],
    };
    plot.current = new uPlot(opts, align(series), box.current);
    return () => {
      plot.current?.destroy();
      plot.current = null;
    };
  }, [title, shape, height]);
  useEffect(() => {
    plot.current?.setData(align(series));
  });
  const points = series.reduce((n, s) => n + s.values.length, 0);
  return <div class="chart" ref={box} data-testid={testid} data-points={points} />;
}

function align(series: Series[]): uPlot.AlignedData {
  const steps = Array.from(new Set(series.flatMap((s) => s.steps))).sort((a, b) => a - b);
  const index = new Map(steps.map((s, i) => [s, i]));
  const cols = series.map((s) => {
    const col: (number | null)[] = new Array(steps.length).fill(null);
    s.steps.forEach((st, i) => (col[index.get(st)!] = Number.isFinite(s.values[i]) ? s.values[i] : null));
    return col;
  });
  return [steps, ...cols] as uPlot.AlignedData;
}
