// Sign in with a token (-> HttpOnly session cookie), sign out, and manage the gateway's tokens.
import { useState } from "preact/hooks";
import { del, post } from "../api";
import { Card, ErrorBox, useApi } from "../ui";
import { when } from "../format";

export interface AuthState {
  auth_required: boolean;
  exposed: boolean;
  signed_in: boolean;
  token_name: string | null;
  expires_in_s: number | null;
}

export function Connection({ auth, onChange }: { auth: AuthState; onChange: () => void }) {
  const [token, setToken] = useState("");
  const [error, setError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);
  const signIn = async (e: Event) => {
    e.preventDefault();
    setBusy(true);
    try {
      await post("/api/v1/auth/session", { token });
      setToken("");
      setError(null);
      onChange();
    } catch (err: any) {
      setError(err.message);
    } finally {
      setBusy(false);
    }
  };
  const signOut = async () => {
    try {
      await del("/api/v1/auth/session");
      onChange();
    } catch (err: any) {
      setError(err.message);
    }
  };
  const mayManage = !auth.auth_required || auth.signed_in;
  return (
    <div>
      <h1>Connection</h1>
      <Card title="This gateway" testid="connection">
        <p>
          {auth.exposed ? "Bound to a network address: every API call needs a token." :
            auth.auth_required ? "Bound to this machine only; tokens exist, so calls need one." :
              "Bound to this machine only and no token exists: no sign-in needed."}
        </p>
        {auth.signed_in ? (
          <div class="row">
            <span data-testid="signed-in">Signed in with token <b>{auth.token_name}</b>
              {auth.expires_in_s !== null ? `, session expires in ${Math.round(auth.expires_in_s / 60)} min` : ""}.</span>
            <button class="secondary" onClick={signOut} data-testid="sign-out">Sign out</button>
          </div>
        ) : auth.auth_required ? (
          <form onSubmit={signIn} class="row">
            <label>Token <input type="password" name="token" value={token} autocomplete="off" size={48}
              onInput={(e) => setToken((e.target as HTMLInputElement).value)} data-testid="token-input" /></label>
            <button type="submit" disabled={busy || !token} data-testid="sign-in">Sign in</button>
          </form>
        ) : null}
        <ErrorBox error={error} />
        <p class="muted">The token is sent once; the browser then holds an HttpOnly session cookie (SameSite=Strict).
          Create a token with <code>halo-forge tokens create NAME</code>, or below once signed in.</p>
      </Card>
      {mayManage && <Tokens onChange={onChange} />}
    </div>
  );
}

function Tokens({ onChange }: { onChange: () => void }) {
  const list = useApi<{ tokens: { name: string; created_at: string; hint: string }[] }>("/api/v1/auth/tokens");
  const [name, setName] = useState("");
  const [created, setCreated] = useState<{ name: string; token: string } | null>(null);
  const [error, setError] = useState<string | null>(null);
  const create = async (e: Event) => {
    e.preventDefault();
    try {
      const t = await post("/api/v1/auth/tokens", { name });
      setCreated({ name: t.name, token: t.token });
      setName("");
      setError(null);
      list.reload();
      onChange();
    } catch (err: any) {
      setError(err.message);
    }
  };
  const revoke = async (n: string) => {
    if (!confirm(`Revoke token ${n}? Clients using it stop working at once.`)) return;
    try {
      await del(`/api/v1/auth/tokens/${encodeURIComponent(n)}`);
      list.reload();
      onChange();
    } catch (err: any) {
      setError(err.message);
    }
  };
  return (
    <Card title="Tokens" testid="tokens">
      <ErrorBox error={list.error ?? error} />
      {created && (
        <div class="card" data-testid="new-token">
          New token <b>{created.name}</b> — copy it now, it is not shown again:
          <pre>{created.token}</pre>
        </div>
      )}
      <table>
        <thead><tr><th>name</th><th>created</th><th>ends with</th><th /></tr></thead>
        <tbody>
          {list.data?.tokens.map((t) => (
            <tr>
              <td>{t.name}</td><td>{when(t.created_at)}</td><td><code>…{t.hint}</code></td>
              <td><button class="danger" onClick={() => revoke(t.name)}>Revoke</button></td>
            </tr>
          ))}
          {list.data && list.data.tokens.length === 0 && <tr><td colSpan={4} class="muted">No stored tokens.</td></tr>}
        </tbody>
      </table>
      <form class="row" onSubmit={create}>
        <input placeholder="token name, e.g. laptop" value={name}
          onInput={(e) => setName((e.target as HTMLInputElement).value)} />
        <button type="submit" disabled={!name}>Create token</button>
      </form>
    </Card>
  );
}
