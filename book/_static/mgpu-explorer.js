// The web explorers' runtime (mgpu_lab.figures.explorers writes the HTML they run on).
//
// Each explorer is a <div class="mgpu-explorer" data-explorer="KIND"> holding a form of
// controls, fields (elements with data-field), a .mgpu-chart and, in a
// <script type="application/json" class="mgpu-data">, every number its controls can
// show, computed by the library when the book was built. Nothing is computed here but
// look-ups in that grid. explorer-*.js register one update(m, s) per KIND; this file
// starts every explorer on the page once the page is parsed.
//
// What the browser tests read: root.mgpuRender (the promise of the latest redraw),
// root.dataset.renders (redraws so far) and root.dataset.redrawMs.
(function () {
  'use strict';
  const updates = {};  // kind -> update(m, s): show the fields, return m.draw(...)

  function runtime(root) {  // look-ups, number formats and the Vega view of one explorer
    const data = JSON.parse(root.querySelector('script.mgpu-data').textContent);
    const axes = data.axes, order = Object.keys(axes);
    const form = root.querySelector('form');
    const chart = root.querySelector('.mgpu-chart');
    function sel() {  // {axis: value} of the controls (a select's value is an option index)
      const s = {};
      for (const el of form.elements) {
        if (!el.name) continue;
        s[el.name] = el.type === 'range' ? Number(el.value) : axes[el.name][Number(el.value)];
      }
      return s;
    }
    function at(s, over) {  // flat index of setting s (with some axes overridden)
      let i = 0;
      for (const a of order) {
        const v = over && a in over ? over[a] : s[a];
        const k = axes[a].indexOf(v);
        if (k < 0) throw new Error('no ' + a + ' = ' + v + ' in the explorer data');
        i = i * axes[a].length + k;
      }
      return i;
    }
    const fmt = {
      int: v => Math.round(v).toLocaleString('en-US'),
      f1: v => v.toLocaleString('en-US', {minimumFractionDigits: 1, maximumFractionDigits: 1}),
      f2: v => v.toFixed(2), pct: v => (100 * v).toFixed(1) + ' %',
      ms: v => v >= 1000 ? Math.round(v).toLocaleString('en-US') : v.toPrecision(4),
      gib: v => (v / 2 ** 30).toFixed(2), gib0: v => String(Number((v / 2 ** 30).toFixed(2))),
      text: v => String(v)};
    function show(name, value, how) {
      for (const el of root.querySelectorAll('[data-field="' + name + '"]')) {
        el.textContent = fmt[how || 'text'](value);
        el.dataset.value = String(value);
      }
    }
    let view = null;
    function draw(spec, datasets) {
      if (!window.vega || !window.vegaLite) {
        chart.textContent = '(the chart needs the web book: Vega was not loaded)';
        return Promise.resolve();
      }
      if (!view) {
        view = new vega.View(vega.parse(vegaLite.compile(spec).spec),
                             {renderer: 'svg', container: chart, hover: true});
      }
      for (const [name, rows] of Object.entries(datasets)) view.data(name, rows);
      return view.runAsync();
    }
    return {data, axes, sel, at, show, draw, form, renders: 0};
  }

  function start(root) {  // draw once, and again on every change of a control
    if (root.mgpuRender) return;  // started already
    const update = updates[root.dataset.explorer];
    if (!update) throw new Error('no explorer script for ' + root.dataset.explorer);
    const m = runtime(root);
    let last = null;
    function redraw() {
      const s = m.sel(), key = JSON.stringify(s);
      if (key === last) return root.mgpuRender;  // a select fires 'input' and 'change'
      last = key;
      const t0 = performance.now();
      const done = update(m, s).then(() => {
        m.renders += 1;
        root.dataset.renders = String(m.renders);
        root.dataset.redrawMs = (performance.now() - t0).toFixed(1);
      });
      root.mgpuRender = done;
      return done;
    }
    m.form.addEventListener('change', redraw);
    m.form.addEventListener('input', redraw);
    redraw();
  }

  function startAll() {
    for (const root of document.querySelectorAll('.mgpu-explorer')) start(root);
  }
  window.mgpuExplorers = {register: (kind, update) => { updates[kind] = update; }, start};
  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', startAll);
  else setTimeout(startAll);  // loaded late: after the explorer scripts registered
})();
