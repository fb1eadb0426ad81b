import { render } from "preact";
import { useEffect, useState } from "preact/hooks";
import "./style.css";
import { get, onUnauthorized } from "./api";
import { useRoute } from "./ui";
import { Overview } from "./pages/overview";
import { Runs } from "./pages/runs";
import { RunDetail } from "./pages/run";
import { Train } from "./pages/train";
import { Compare } from "./pages/compare";
import { Evaluate } from "./pages/evaluate";
import { Models } from "./pages/models";
import { Sweeps, SweepDetail } from "./pages/sweeps";
import { Connection, type AuthState } from "./pages/connection";

const NAV: [string, string][] = [
  ["", "Overview"], ["train", "Train"], ["runs", "Runs"], ["compare", "Compare"], ["evaluate", "Evaluate"],
  ["models", "Models"], ["sweeps", "Sweeps"], ["connection", "Connection"],
];

function App() {
  const route = useRoute();
  const [auth, setAuth] = useState<AuthState | null>(null);
  const [authError, setAuthError] = useState<string | null>(null);
  const refreshAuth = () =>
    get<AuthState>("/api/v1/auth/session").then(setAuth).catch((e) => setAuthError(String(e.message ?? e)));
  useEffect(() => {
    refreshAuth();
    const on = () => refreshAuth();
    onUnauthorized.add(on);
    return () => onUnauthorized.delete(on);
  }, []);
  const page = route.path[0] ?? "";
  const locked = auth !== null && auth.auth_required && !auth.signed_in;
  let body;
  if (auth === null) body = authError ? <div class="error">{authError}</div> : <p>Connecting…</p>;
  else if (locked || page === "connection") body = <Connection auth={auth} onChange={refreshAuth} />;
  else if (page === "train") body = <Train />;
  else if (page === "runs" && route.path[1]) body = <RunDetail runId={route.path[1]} />;
  else if (page === "runs") body = <Runs query={route.query} />;
  else if (page === "compare") body = <Compare query={route.query} />;
  else if (page === "evaluate") body = <Evaluate />;
  else if (page === "models") body = <Models />;
  else if (page === "sweeps" && route.path[1]) body = <SweepDetail sweepId={route.path[1]} />;
  else if (page === "sweeps") body = <Sweeps />;
  else body = <Overview />;
  return (
    <div class="shell">
      <header>
        <span class="brand">Halo Forge</span>
        <nav>
          {NAV.map(([h, label]) => (
            <a href={`#/${h}`} class={page === h ? "active" : ""}>{label}</a>
          ))}
        </nav>
        <span class="who" data-testid="auth-state">
          {auth === null ? "" : !auth.auth_required ? "local (no token needed)"
            : auth.signed_in ? `signed in (${auth.token_name})` : "signed out"}
        </span>
      </header>
      <main>{body}</main>
    </div>
  );
}

render(<App />, document.getElementById("app")!);
