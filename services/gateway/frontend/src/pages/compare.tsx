// Up to 8 runs: overlaid curves (downsampled by the registry) and the config diff, differing keys highlighted.
import { useState } from "preact/hooks";
import { qs } from "../api";
import { Card, Chart, ErrorBox, go, useApi } from "../ui";
import { show } from "../format";

export function Compare({ query }: { query: URLSearchParams }) {
  const ids = (query.get("ids") ?? "").split(",").filter(Boolean).slice(0, 8);
  const [draft, setDraft] = useState(ids.join(","));
  const cmp = useApi(ids.length >= 1 ? `/api/v1/runs/compare${qs({ ids, max_points: 300 })}` : null, [ids.join(",")]);
  const data = cmp.data;
  const label = (id: string) => data?.runs.find((r: any) => r.run_id === id)?.name ?? id;
  return (
    <div>
      <h1>Compare</h1>
      <Card title="Runs">
        <form class="row" onSubmit={(e) => { e.preventDefault(); go(`#/compare?ids=${draft.replace(/\s+/g, "")}`); }}>
          <input size={80} value={draft} placeholder="run ids, comma separated (pick them on the Runs page)"
            onInput={(e) => setDraft((e.target as HTMLInputElement).value)} />
          <button type="submit">Compare</button>
        </form>
        <ErrorBox error={cmp.error} />
      </Card>
      {data && (
        <>
          <Card title="Curves" testid="compare-curves">
            <div class="grid2">
              {data.metrics.map((m: string) => (
                <Chart title={m} testid={`compare-chart-${m}`} series={data.runs.map((r: any) => {
                  const s = (data.series[r.run_id] ?? []).find((x: any) => x.name === m);
                  return { label: label(r.run_id), steps: s?.steps ?? [], values: s?.values ?? [] };
                })} />
              ))}
            </div>
            {data.metrics.length === 0 && <p class="muted">No metric in common.</p>}
          </Card>
          <Card title={`Config diff (${data.config_diff.length} differ, ${data.identical_keys} identical)`} testid="config-diff">
            <table>
              <thead><tr><th>key</th>{data.runs.map((r: any) => <th>{label(r.run_id)}</th>)}</tr></thead>
              <tbody>
                {data.config_diff.map((row: any) => {
                  const first = JSON.stringify(row.values[data.runs[0].run_id]);
                  return (
                    <tr class="differs" data-key={row.key}>
                      <td><code>{row.key}</code></td>
                      {data.runs.map((r: any) => (
                        <td class={JSON.stringify(row.values[r.run_id]) !== first ? "differs" : ""}>
                          {show(row.values[r.run_id])}
                        </td>
                      ))}
                    </tr>
                  );
                })}
              </tbody>
            </table>
          </Card>
        </>
      )}
    </div>
  );
}
