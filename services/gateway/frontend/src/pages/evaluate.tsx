// The cohort grid (runs x tasks, best per task marked) and recording / launching evaluations.
import { useState } from "preact/hooks";
import { post } from "../api";
import { Card, ErrorBox, useApi } from "../ui";
import { num, NA } from "../format";

export function Evaluate() {
  const grid = useApi("/api/v1/runs/grid");
  const tasks = useApi<{ tasks: any[] }>("/api/v1/eval/tasks");
  const g = grid.data;
  const cell = (run: string, task: string) => g.cells.find((c: any) => c.run_id === run && c.task === task);
  return (
    <div>
      <h1>Evaluate</h1>
      <Card title="Cohort grid" testid="grid">
        <ErrorBox error={grid.error} />
        {g && g.runs.length === 0 && <p class="muted">No run has an evaluation yet.</p>}
        {g && g.runs.length > 0 && (
          <table>
            <thead>
              <tr><th>run</th>{g.tasks.map((t: any) => (
                <th>{t.task}<br /><span class="muted">{t.metric} {t.higher_is_better ? "↑" : "↓"}</span></th>))}</tr>
            </thead>
            <tbody>
              {g.runs.map((r: any) => (
                <tr>
                  <td><a href={`#/runs/${r.run_id}`}>{r.name ?? r.run_id}</a></td>
                  {g.tasks.map((t: any) => {
                    const c = cell(r.run_id, t.task);
                    return c ? (
                      <td class={c.best ? "best" : ""} data-run={r.run_id} data-task={t.task} data-best={c.best ? "1" : "0"}>
                        {num(c.value)}{c.stderr !== null ? ` ± ${num(c.stderr, 2)}` : ""}{c.best ? " ★" : ""}
                      </td>
                    ) : <td class="na">{NA}</td>;
                  })}
                </tr>
              ))}
            </tbody>
          </table>
        )}
        <button class="secondary" onClick={grid.reload}>Refresh</button>
      </Card>
      <LaunchEval tasks={tasks.data?.tasks ?? []} tasksError={tasks.error} onDone={grid.reload} />
    </div>
  );
}

function LaunchEval({ tasks, tasksError, onDone }: { tasks: any[]; tasksError: string | null; onDone: () => void }) {
  const [body, setBody] = useState('{\n  "model": "",\n  "tasks": []\n}');
  const [result, setResult] = useState<string | null>(null);
  const [error, setError] = useState<string | null>(null);
  const launch = async (path: string) => {
    try {
      const r = await post(path, JSON.parse(body));
      setResult(`queued ${r.job_id} (run ${r.run_id})`);
      setError(null);
      onDone();
    } catch (e: any) {
      setError(e.message);
    }
  };
  return (
    <Card title="Launch an evaluation or probe">
      <ErrorBox error={tasksError} />
      {tasks.length > 0 && <p class="muted">Tasks: {tasks.map((t) => t.name ?? t.task ?? JSON.stringify(t)).join(", ")}</p>}
      <textarea rows={6} value={body} onInput={(e) => setBody((e.target as HTMLTextAreaElement).value)} />
      <div class="row">
        <button onClick={() => launch("/api/v1/eval/jobs")}>Launch eval</button>
        <button class="secondary" onClick={() => launch("/api/v1/eval/probe")}>Launch probe</button>
        <span>{result}</span>
      </div>
      <ErrorBox error={error} />
    </Card>
  );
}
