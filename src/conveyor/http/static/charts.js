// Charts of the last hour from /api/history (kept by the dashboard process), redrawn every poll.
(function () {
  "use strict";
  const charts = {};
  const specs = {
    "chart-rates": [["completed_per_s", "completed/s", "#1c6b2a"], ["failed_per_s", "failed/s", "#c0392b"]],
    "chart-depth": [["depth_ready", "ready", "#2d7dd2"], ["depth_delayed", "delayed", "#97cc04"],
                    ["depth_leased", "leased", "#eeb902"], ["depth_dead", "dead", "#c0392b"]],
    "chart-peers": [["workers", "workers", "#2d7dd2"], ["clients", "clients", "#6b7785"], ["inflight", "in flight", "#eeb902"]],
  };
  function draw(series) {
    for (const [id, lines] of Object.entries(specs)) {
      const el = document.getElementById(id);
      if (!el) continue;
      const data = [series.t].concat(lines.map(l => series[l[0]]));
      if (!charts[id]) {
        charts[id] = new uPlot({
          width: 420, height: 200,
          series: [{}].concat(lines.map(l => ({label: l[1], stroke: l[2], width: 1.5}))),
          axes: [{}, {size: 50}],
        }, data, el);
      } else {
        charts[id].setData(data);
      }
    }
  }
  function refresh() {
    fetch("/api/history", {credentials: "same-origin"})
      .then(r => r.ok ? r.json() : null)
      .then(body => { if (body) { draw(body.series); setTimeout(refresh, body.interval * 1000); } else { setTimeout(refresh, 5000); } })
      .catch(() => setTimeout(refresh, 5000));
  }
  refresh();
})();
