// mindloop UI: draws the charts (Chart.js) and the graph (Cytoscape.js) from the JSON blocks the pages embed.
// Data arrives in <script type="application/json"> blocks and is only ever drawn on canvases or set as text,
// never written as HTML, so texts from users and the model cannot become markup here.
(function () {
  "use strict";

  function data(id) {
    var el = document.getElementById(id);
    return el ? JSON.parse(el.textContent) : null;
  }

  function when(ms) {
    var d = new Date(ms);
    return d.toLocaleDateString(undefined, { month: "short", day: "numeric" }) + " " +
      d.toLocaleTimeString(undefined, { hour: "2-digit", minute: "2-digit" });
  }

  var GREEN = "#1a7f37", RED = "#cf222e", BLUE = "#0969da", GREY = "#8c959f";

  // Vertical lines at promotions and rollbacks (chartjs-plugin-annotation).
  function eventLines(events) {
    var lines = {};
    (events || []).forEach(function (ev, i) {
      var promote = ev.event === "promote";
      lines["ev" + i] = {
        type: "line", scaleID: "x", value: ev.at * 1000,
        borderColor: promote ? GREEN : RED, borderWidth: 2,
        borderDash: ev.this_pattern === false ? [4, 4] : [],
        label: {
          // alternate heights so that labels of close events do not cover each other
          display: true, position: ["start", "center", "end"][i % 3], backgroundColor: promote ? GREEN : RED,
          font: { size: 10 }, content: (promote ? "promoted …" : "rolled back …") + (ev.checkpoint || "").slice(-6)
        }
      };
    });
    return lines;
  }

  function timeAxis() {
    return { type: "linear", ticks: { callback: function (v) { return when(v); }, maxTicksLimit: 8 } };
  }

  var builders = {
    // Patterns: flags per time bin, with promotions and rollbacks marked.
    timeline: function (d) {
      var width = (d.width_s || 86400) * 1000;
      var points = d.bins.map(function (b) { return { x: b.start * 1000 + width / 2, y: b.flags }; });
      return {
        type: "bar",
        data: { datasets: [{ label: "flags", data: points, backgroundColor: BLUE, barPercentage: 1, categoryPercentage: 0.9 }] },
        options: {
          animation: false, parsing: false, maintainAspectRatio: false,
          scales: { x: timeAxis(), y: { beginAtZero: true, ticks: { precision: 0 }, title: { display: true, text: "flags" } } },
          plugins: { legend: { display: false }, annotation: { annotations: eventLines(d.events) },
                     tooltip: { callbacks: { title: function (items) { return when(items[0].parsed.x - width / 2); } } } }
        }
      };
    },
    // Runs: training loss per logged step.
    loss: function (steps) {
      var points = steps.filter(function (s) { return typeof s.loss === "number"; })
        .map(function (s) { return { x: s.step, y: s.loss }; });
      return {
        type: "line",
        data: { datasets: [{ label: "training loss", data: points, borderColor: BLUE, backgroundColor: BLUE, pointRadius: 2, tension: 0.2 }] },
        options: {
          animation: false, parsing: false, maintainAspectRatio: false,
          scales: { x: { type: "linear", title: { display: true, text: "step" } }, y: { title: { display: true, text: "loss" } } },
          plugins: { legend: { display: false } }
        }
      };
    },
    // Observer: per-window rates for each checkpoint, before (its parent's baseline) and after promotion.
    rates: function (d) {
      var palette = [BLUE, "#8250df", "#bf8700", "#1b7c83", "#bc4c00"];
      var datasets = [];
      d.series.forEach(function (s, i) {
        var colour = s.phase === "before" ? GREY : palette[i % palette.length];
        datasets.push({ label: s.label + ": flagged turns / turn", data: s.flags, borderColor: colour,
                        backgroundColor: colour, pointRadius: 3, stepped: false });
        if (s.surfaced.length) {
          datasets.push({ label: s.label + ": correction memories / turn", data: s.surfaced, borderColor: colour,
                          backgroundColor: colour, borderDash: [6, 4], pointRadius: 2 });
        }
      });
      return {
        type: "line",
        data: { datasets: datasets },
        options: {
          animation: false, parsing: false, maintainAspectRatio: false,
          scales: { x: timeAxis(), y: { beginAtZero: true, title: { display: true, text: "share of turns" } } },
          plugins: { annotation: { annotations: eventLines(d.events) } }
        }
      };
    }
  };

  function drawCharts() {
    if (!window.Chart) { return; }
    if (window["chartjs-plugin-annotation"]) { window.Chart.register(window["chartjs-plugin-annotation"]); }
    document.querySelectorAll("canvas[data-chart]").forEach(function (canvas) {
      var build = builders[canvas.dataset.chart], d = data(canvas.dataset.source);
      if (build && d) { new window.Chart(canvas, build(d)); canvas.dataset.drawn = "1"; }
    });
  }

  var KIND_COLOURS = {
    session: "#8c959f", turn: "#0969da", memory: "#1b7c83", flag: "#cf222e", pattern: "#bf8700",
    example: "#8250df", run: "#1a7f37", checkpoint: "#116329", eval: "#57606a", alert: "#a40e26"
  };

  function drawGraph() {
    var el = document.querySelector("[data-graph]");
    if (!el || !window.cytoscape) { return; }
    var d = data(el.dataset.graph);
    var elements = d.nodes.map(function (n) {
      return { data: { id: n.id, label: n.label, kind: n.kind, depth: n.depth, href: n.href,
                       colour: KIND_COLOURS[n.kind] || GREY, centre: n.id === d.centre ? 1 : 0 } };
    }).concat(d.edges.map(function (e, i) {
      return { data: { id: "e" + i, source: e.source, target: e.target, kind: e.kind } };
    }));
    var maxDepth = d.nodes.reduce(function (m, n) { return Math.max(m, n.depth); }, 0);
    var cy = window.cytoscape({
      container: el, elements: elements,
      style: [
        { selector: "node", style: { "background-color": "data(colour)", label: "data(label)", "font-size": 9,
                                     "text-wrap": "ellipsis", "text-max-width": 140, "text-valign": "bottom",
                                     "text-margin-y": 3, width: 16, height: 16, color: "#24292f" } },
        { selector: "node[centre = 1]", style: { width: 28, height: 28, "border-width": 3, "border-color": "#24292f",
                                                 "font-weight": "bold" } },
        { selector: "edge", style: { width: 1.5, "line-color": "#afb8c1", "target-arrow-color": "#afb8c1",
                                     "target-arrow-shape": "triangle", "curve-style": "bezier", label: "data(kind)",
                                     "font-size": 7, color: "#57606a", "text-rotation": "autorotate" } }
      ],
      layout: { name: "concentric", concentric: function (n) { return maxDepth - n.data("depth"); },
                levelWidth: function () { return 1; }, minNodeSpacing: 24, animate: false }
    });
    cy.on("tap", "node", function (evt) {
      var target = evt.target.data("href");
      if (target && evt.target.data("centre") !== 1) { window.location.assign(target); }
    });
    el.dataset.drawn = "1";
  }

  drawCharts();
  drawGraph();
})();
