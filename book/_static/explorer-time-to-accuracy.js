// Chapter 13's explorer (mgpu_lab.figures.tta_explorer.time_to_accuracy): predicted time
// to the target against the number of GPUs N, and the three limits on the samples per
// GPU. Runs on mgpu-explorer.js; m.data.fields holds each field (seconds, steps, step_s,
// comm_s, b, batch) for every workload x GPU x strategy x split x N, flattened in that
// order (null where the split does not fit); b_star[workload|gpu|strategy] is b* for each
// N, b_crit_share[workload] B_crit / N for each N, b_mem[workload|gpu] the memory limit,
// marks[workload|gpu|strategy|split] the N where the batch reaches B_crit (stat), where
// the step turns communication-bound (comm) and where the time is shortest (best). All
// computed by the library when the book was built; this script only looks them up.
mgpuExplorers.register('time-to-accuracy', function update(m, s) {
  const F = m.data.fields, NS = m.axes.n_gpus;
  const LIMITS = ['memory: b_mem', 'communication: b*', 'statistics: B_crit / N'];
  const w = m.data.workloads[s.workload];
  const key = s.workload + '|' + s.gpu, mark = m.data.marks[key + '|' + s.strategy + '|' + s.split];
  const bstar = m.data.b_star[key + '|' + s.strategy], bmem = m.data.b_mem[key];
  const UNITS = [[3600, ' h'], [60, ' min'], [1, ' s'], [1e-3, ' ms'], [1e-6, ' µs']];
  const fmtT = v => {  // a time in seconds, to 3 significant digits in a readable unit
    if (v === null || v === undefined) return '–';
    const [u, name] = UNITS.find(([u]) => v >= u) || UNITS[UNITS.length - 1];
    return (v / u).toPrecision(3) + name;
  };
  // the time axis is in seconds, each label in a readable unit (one view serves every
  // workload: ImageNet's hours and the digits' microseconds)
  const TIME_LABEL = "datum.value >= 3600 ? format(datum.value / 3600, '.3~g') + ' h' : " +
    "datum.value >= 60 ? format(datum.value / 60, '.3~g') + ' min' : " +
    "datum.value >= 1 ? format(datum.value, '.3~g') + ' s' : " +
    "datum.value >= 1e-3 ? format(1e3 * datum.value, '.3~g') + ' ms' : " +
    "format(1e6 * datum.value, '.3~g') + ' µs'";
  const xN = {field: 'n', type: 'quantitative', scale: {type: 'log', base: 2},
              axis: {values: NS.filter((n, k) => k % 2 === 0), format: 'd'},
              title: 'number of GPUs N'};
  const rule = {type: 'rule', strokeDash: [4, 3], strokeWidth: 1.5};
  const spec = {  // resize: the layout follows the labels when another setting is drawn
    autosize: {type: 'pad', resize: true},
    resolve: {scale: {color: 'independent'}},
    hconcat: [
      {width: 230, height: 210, title: 'Time to target (predicted)',
       layer: [
         {data: {name: 'curve'}, mark: {type: 'line', point: true, color: '#4c78a8'},
          encoding: {x: xN, y: {field: 't', type: 'quantitative', scale: {type: 'log'},
                                title: 'time to target', axis: {labelExpr: TIME_LABEL}},
                     tooltip: [{field: 'n', title: 'GPUs'}, {field: 'b', title: 'per GPU'},
                               {field: 'batch'}, {field: 'time', title: 'time to target'}]}},
         {data: {name: 'marks'}, mark: rule,
          encoding: {x: {field: 'n', type: 'quantitative'},
                     color: {field: 'what', type: 'nominal',
                             scale: {domain: ['batch reaches B_crit', 'communication-bound',
                                              'shortest time'],
                                     range: ['#e45756', '#f58518', '#54a24b']},
                             legend: {orient: 'bottom', title: null, columns: 1}}}},
         {data: {name: 'here'}, mark: {type: 'point', size: 160, filled: false,
                                       color: 'black', strokeWidth: 2},
          encoding: {x: xN, y: {field: 't', type: 'quantitative'}}}]},
      {width: 230, height: 210, title: 'Three limits on the split (predicted)',
       layer: [
         {data: {name: 'limits'}, mark: {type: 'line', strokeWidth: 2},
          encoding: {x: xN, y: {field: 'v', type: 'quantitative', scale: {type: 'log'},
                                title: 'samples per GPU'},
                     color: {field: 'limit', type: 'nominal',
                             scale: {domain: LIMITS, range: ['#9d755d', '#f58518', '#e45756']},
                             legend: {orient: 'bottom', title: null, columns: 1}},
                     tooltip: [{field: 'limit'}, {field: 'n', title: 'GPUs'},
                               {field: 'v', format: '.3g', title: 'samples per GPU'}]}},
         {data: {name: 'split'}, mark: {type: 'point', filled: true, color: '#4c78a8'},
          encoding: {x: xN, y: {field: 'b', type: 'quantitative'},
                     tooltip: [{field: 'n', title: 'GPUs'}, {field: 'b', title: 'split'}]}}]}]};
  const i = m.at(s);
  for (const a of ['gpu', 'n_gpus']) m.show(a, s[a]);
  m.show('strategy', m.data.strategy_labels[m.axes.strategy.indexOf(s.strategy)]);
  const fits = F.seconds[i] !== null;
  m.show('b', fits ? F.b[i] : '–', fits ? 'int' : 'text');
  m.show('batch', fits ? F.batch[i] : '–', fits ? 'int' : 'text');
  m.show('steps', fits ? F.steps[i] : '–', fits ? 'int' : 'text');
  m.show('step_ms', fits ? 1e3 * F.step_s[i] : '–', fits ? 'ms' : 'text');
  m.show('comm_ms', fits ? 1e3 * F.comm_s[i] : '–', fits ? 'ms' : 'text');
  m.show('time', fmtT(F.seconds[i]));
  m.show('none_fits', fits ? '' : ' That split does not fit in the GPU\'s memory (or the ' +
         'batch exceeds the workload\'s data): nothing to show.');
  const best = mark.best === null ? null : F.seconds[m.at(s, {n_gpus: mark.best})];
  m.show('best_time', fmtT(best));
  m.show('best_n', mark.best === null ? '–' : mark.best, mark.best === null ? 'text' : 'int');
  m.show('b_mem', bmem, 'int');
  m.show('b_star', bstar[NS.indexOf(s.n_gpus)], 'f1');
  m.show('share', m.data.b_crit_share[s.workload][NS.indexOf(s.n_gpus)], 'f1');
  m.show('steps_label', w.label);
  m.show('source', m.data.gpus[s.gpu].source);
  m.show('efficiency_source', m.data.gpus[s.gpu].efficiency_source);
  const curve = [], split = [], limits = [];
  NS.forEach((n, k) => {
    const j = m.at(s, {n_gpus: n});
    if (F.seconds[j] !== null) {
      curve.push({n, t: F.seconds[j], time: fmtT(F.seconds[j]), b: F.b[j], batch: F.batch[j]});
      split.push({n, b: F.b[j]});
    }
    if (bmem > 0) limits.push({n, limit: LIMITS[0], v: bmem});
    if (bstar[k] > 0) limits.push({n, limit: LIMITS[1], v: bstar[k]});
    limits.push({n, limit: LIMITS[2], v: m.data.b_crit_share[s.workload][k]});
  });
  const marks = [];
  if (mark.stat !== null) marks.push({n: mark.stat, what: 'batch reaches B_crit'});
  if (mark.comm !== null) marks.push({n: mark.comm, what: 'communication-bound'});
  if (mark.best !== null) marks.push({n: mark.best, what: 'shortest time'});
  const here = fits ? [{n: s.n_gpus, t: F.seconds[i]}] : [];
  return m.draw(spec, {curve, marks, here, split, limits});
});
