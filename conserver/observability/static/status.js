/* conserver's status page: draws /status/history.json with uPlot and refreshes the
   server-rendered tables. Everything textual comes escaped from the server; this script
   only places it. Each chart element says what it holds in data attributes
   (data-series, data-points, data-drawn: the data read back from its uPlot instance),
   so a headless browser can check the drawing against the numbers. */
(function () {
  "use strict";
  var COLORS = ["#1f77b4", "#d62728", "#7f3fbf", "#2ca02c", "#ff7f0e", "#17becf", "#8c564b", "#e377c2", "#bcbd22"];
  var plots = {};

  function fmt(unit) {
    return function (u, v) {
      if (v == null) return "-";
      if (unit === "s") return v < 1 ? (v * 1000).toFixed(1) + " ms" : v.toFixed(2) + " s";
      if (unit === "/s") return v.toFixed(1) + "/s";
      if (unit === "state") return ["closed", "half-open", "open"][Math.round(v)] || String(v);
      return String(Math.round(v));
    };
  }

  function options(chart, width) {
    var f = fmt(chart.unit);
    var series = [{}];
    chart.series.forEach(function (s, i) {
      series.push({label: s.name, stroke: COLORS[i % COLORS.length], width: 2, value: f,
                   paths: chart.unit === "state" ? uPlot.paths.stepped({align: 1}) : undefined});
    });
    var y = chart.unit === "state" ? {range: [0, 2]} : {range: function (u, lo, hi) { return [0, Math.max(hi, chart.unit === "s" ? 0.001 : 1) * 1.1]; }};
    return {width: width, height: 180, series: series, scales: {x: {time: true}, y: y},
            axes: [{}, {values: function (u, ticks) { return ticks.map(function (v) { return f(u, v); }); }, size: 70}],
            legend: {live: true}, cursor: {drag: {x: false, y: false}}};
  }

  function draw(doc) {
    var box = document.getElementById("charts");
    if (!box || !window.uPlot) return;
    var empty = box.querySelector(".empty");
    if (empty && doc.charts.length) empty.remove();
    doc.charts.forEach(function (chart) {
      var el = document.getElementById("chart-" + chart.id);
      if (!el) {
        el = document.createElement("figure");
        el.className = "chart";
        el.id = "chart-" + chart.id;
        el.dataset.chart = chart.id;
        var cap = document.createElement("figcaption");
        cap.textContent = chart.title;
        el.appendChild(cap);
        box.appendChild(el);
      }
      var data = [doc.t].concat(chart.series.map(function (s) { return s.values; }));
      var names = chart.series.map(function (s) { return s.name; });
      var p = plots[chart.id];
      if (!p || p.names !== names.join("\u0000")) {
        if (p) p.plot.destroy();
        var width = Math.max(320, Math.min(560, el.clientWidth || 560));
        p = plots[chart.id] = {names: names.join("\u0000"), plot: new uPlot(options(chart, width), data, el)};
      } else {
        p.plot.setData(data);
      }
      el.dataset.series = JSON.stringify(names);
      el.dataset.points = String(doc.t.length);
      el.dataset.drawn = JSON.stringify(p.plot.data);
    });
    box.dataset.updated = String(Date.now());
  }

  function poll(url, then) {
    return fetch(url, {cache: "no-store", credentials: "omit"}).then(function (r) {
      if (!r.ok) throw new Error(url + ": " + r.status);
      return then(r);
    }).catch(function () { /* the monitor restarts on SIGHUP: try again next time */ });
  }

  function refresh() {
    var charts = document.getElementById("charts");
    var tables = document.getElementById("tables");
    if (charts) poll(charts.dataset.src, function (r) { return r.json().then(draw); });
    if (tables) poll(tables.dataset.src + location.search, function (r) { return r.text().then(function (t) { tables.innerHTML = t; }); });
  }

  /* dead letters: "select all" and the token kept for this tab only */
  function deadLetters() {
    var all = document.getElementById("select-all");
    if (all) all.addEventListener("change", function () {
      document.querySelectorAll("input[name=item]").forEach(function (c) { c.checked = all.checked; });
    });
    document.querySelectorAll("input[name=token]").forEach(function (t) {
      t.value = sessionStorage.getItem("conserver-token") || "";
      t.addEventListener("change", function () { sessionStorage.setItem("conserver-token", t.value); });
    });
    document.querySelectorAll("form[data-confirm]").forEach(function (f) {
      f.addEventListener("submit", function (e) {
        var n = f.querySelectorAll("input[name=item]:checked").length || 1;
        if (!window.confirm(f.dataset.confirm.replace("N", n))) e.preventDefault();
      });
    });
  }

  function start() {
    var data = document.getElementById("history-data");
    if (data) {
      draw(JSON.parse(data.textContent));
      setInterval(refresh, 2000);
    }
    deadLetters();
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start); else start();
})();
