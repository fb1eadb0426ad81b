// The one way the dashboard talks to the gateway: same-origin fetch (the session cookie travels by itself),
// the CSRF header on every state-changing request, and the API's own error message on failure.

export class ApiError extends Error {
  constructor(message: string, public status: number, public param: string | null = null) {
    super(message);
  }
}

/** Listeners told when the gateway answers 401 (the app then shows the Connection page). */
export const onUnauthorized = new Set<() => void>();

export function csrfToken(): string | undefined {
  const m = document.cookie.match(/(?:^|;\s*)halo_csrf=([^;]+)/);
  return m ? decodeURIComponent(m[1]) : undefined;
}

export function headersFor(method: string, json: boolean): Record<string, string> {
  const h: Record<string, string> = {};
  if (json) h["Content-Type"] = "application/json";
  if (method !== "GET" && method !== "HEAD") {
    const c = csrfToken();
    if (c) h["X-Halo-CSRF"] = c;
  }
  return h;
}

export async function errorOf(r: Response): Promise<ApiError> {
  const text = await r.text();
  let message = `${r.status} ${r.statusText}`;
  let param: string | null = null;
  try {
    const data = JSON.parse(text);
    if (data?.error?.message) {
      message = data.error.message;
      param = data.error.param ?? null;
    }
  } catch {
    if (text) message = `${message}: ${text.slice(0, 300)}`;
  }
  if (r.status === 401) onUnauthorized.forEach((f) => f());
  return new ApiError(message, r.status, param);
}

export async function api<T = any>(method: string, path: string, body?: unknown): Promise<T> {
  const r = await fetch(path, {
    method,
    headers: headersFor(method, body !== undefined),
    body: body === undefined ? undefined : JSON.stringify(body),
    credentials: "same-origin",
  });
  if (!r.ok) throw await errorOf(r);
  const text = await r.text();
  return (text ? JSON.parse(text) : null) as T;
}

export const get = <T = any>(path: string) => api<T>("GET", path);
export const post = <T = any>(path: string, body: unknown = {}) => api<T>("POST", path, body);
export const del = <T = any>(path: string) => api<T>("DELETE", path);

/** Server-sent events as parsed JSON; returns a closer. ``onEnd`` is called when ``isLast`` says so (the
 *  stream is then closed, so EventSource does not reconnect and replay it again). */
export function sse(path: string, onData: (data: any) => void, opts: { isLast?: (d: any) => boolean;
  onError?: (msg: string) => void } = {}): () => void {
  const es = new EventSource(path, { withCredentials: true });
  es.onmessage = (e) => {
    let data: any;
    try {
      data = JSON.parse(e.data);
    } catch {
      return;
    }
    onData(data);
    if (opts.isLast?.(data)) es.close();
  };
  es.onerror = () => {
    if (es.readyState === EventSource.CLOSED) opts.onError?.("the live stream closed; reload to retry");
  };
  return () => es.close();
}

export function qs(params: Record<string, string | number | boolean | string[] | null | undefined>): string {
  const parts: string[] = [];
  for (const [k, v] of Object.entries(params)) {
    if (v === undefined || v === null || v === "" || (Array.isArray(v) && v.length === 0)) continue;
    parts.push(`${encodeURIComponent(k)}=${encodeURIComponent(Array.isArray(v) ? v.join(",") : String(v))}`);
  }
  return parts.length ? `?${parts.join("&")}` : "";
}
