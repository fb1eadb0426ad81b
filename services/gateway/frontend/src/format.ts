// Display helpers: a missing value is "unavailable", never 0.
export const NA = "unavailable";

export function num(v: number | null | undefined, digits = 4): string {
  if (v === null || v === undefined || Number.isNaN(v)) return NA;
  if (Number.isInteger(v)) return String(v);
  const a = Math.abs(v);
  return a !== 0 && (a < 1e-4 || a >= 1e6) ? v.toExponential(2) : v.toPrecision(digits).replace(/\.?0+$/, "");
}

export function pct(ratio: number | null | undefined): string {
  return ratio === null || ratio === undefined ? NA : `${(ratio * 100).toFixed(0)} %`;
}

export function bytes(v: number | null | undefined): string {
  if (v === null || v === undefined) return NA;
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return `${v.toFixed(i ? 1 : 0)} ${units[i]}`;
}

export function duration(s: number | null | undefined): string {
  if (s === null || s === undefined) return NA;
  if (s < 60) return `${s.toFixed(1)} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${Math.round(s % 60)} s`;
  return `${Math.floor(s / 3600)} h ${Math.round((s % 3600) / 60)} min`;
}

export function when(iso: string | null | undefined): string {
  if (!iso) return NA;
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? NA : d.toLocaleString();
}

export function show(v: unknown): string {
  if (v === null || v === undefined) return NA;
  if (typeof v === "number") return num(v);
  if (typeof v === "string") return v;
  return JSON.stringify(v);
}
