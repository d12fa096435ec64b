// Chapter 6's explorer (mgpu_lab.figures.explorers.throughput): predicted images/s,
// speed-up, efficiency and the step's compute and communication time. Runs on
// mgpu-explorer.js; m.data.fields holds each prediction field for every
// network x GPU x batch x strategy x overlap x N, flattened in that order.
// The step's bar is the step (step_s): compute from 0, then the communication that adds
// to the step (step_s - compute_s); the communication hidden by overlap (hidden_s) is
// drawn lighter and dashed over the top of the compute it ran under (the parts are named
// as mgpu_lab.figures.labcharts.STEP_PARTS names them).
mgpuExplorers.register('throughput', function update(m, s) {
  const F = m.data.fields, NS = m.axes.n_gpus;
  const PARTS = ['compute', 'communication', 'communication hidden by overlap'];
  const xN = {field: 'n', type: 'ordinal', title: 'number of GPUs', axis: {labelAngle: 0}};
  const spec = {
    resolve: {scale: {color: 'independent'}, legend: {color: 'independent'}},
    hconcat: [
      {width: 250, height: 190, title: 'Predicted images/s',
       layer: [
         {data: {name: 'curve'}, mark: {type: 'line', point: true},
          encoding: {x: xN, y: {field: 'images_per_s', type: 'quantitative',
                                title: 'images per second'},
                     color: {field: 'strategy', type: 'nominal',
                             legend: {orient: 'bottom', title: null}},
                     tooltip: [{field: 'strategy'}, {field: 'n', title: 'GPUs'},
                               {field: 'images_per_s', format: ',.0f'}]}},
         {data: {name: 'here'}, mark: {type: 'point', size: 160, shape: 'circle',
                                       filled: false, color: 'black', strokeWidth: 2},
          encoding: {x: xN, y: {field: 'images_per_s', type: 'quantitative'}}}]},
      {width: 250, height: 190, title: 'Predicted time per step',
       encoding: {x: xN, y: {field: 'lo', type: 'quantitative',
                             title: 'milliseconds per step'},
                  y2: {field: 'hi'},
                  color: {field: 'part', type: 'nominal', scale: {domain: PARTS,
                          range: ['#4c78a8', '#f58518', '#fdd9b5']},
                          legend: {orient: 'bottom', title: null, columns: 1}},
                  opacity: {condition: {test: 'datum.here', value: 1}, value: 0.55},
                  tooltip: [{field: 'part'}, {field: 'n', title: 'GPUs'},
                            {field: 'ms', format: '.2f'}]},
       layer: [{data: {name: 'split'}, mark: 'bar'},
               {data: {name: 'hidden'}, mark: {type: 'bar', stroke: '#f58518',
                                                strokeDash: [3, 2], strokeWidth: 1}}]}]};
  const i = m.at(s);
  for (const f of ['images_per_s', 'batch_size', 'split']) m.show(f, F[f][i], 'int');
  m.show('speedup', F.speedup[i], 'f2');
  m.show('scaling_efficiency', F.scaling_efficiency[i], 'pct');
  for (const f of ['compute_s', 'comm_s', 'step_s', 'hidden_s']) m.show(f, 1e3 * F[f][i], 'ms');
  for (const a of ['net', 'gpu', 'strategy', 'n_gpus']) m.show(a, s[a]);
  m.show('overlap', s.overlap ? 'on' : 'off');
  const g = m.data.gpus[s.gpu];
  m.show('source', g.source);
  m.show('efficiency', g.efficiency, 'pct');
  m.show('efficiency_source', g.efficiency_source);
  const curve = [], split = [], hidden = [];
  for (const strategy of m.axes.strategy) for (const n of NS) {
    curve.push({n, strategy, images_per_s: F.images_per_s[m.at(s, {strategy, n_gpus: n})]});
  }
  for (const n of NS) {  // the bar's top is the step, step_s
    const k = m.at(s, {n_gpus: n}), here = n === s.n_gpus;
    const c = 1e3 * F.compute_s[k], t = 1e3 * F.step_s[k], h = 1e3 * F.hidden_s[k];
    split.push({n, part: PARTS[0], lo: 0, hi: c, ms: c, here});
    split.push({n, part: PARTS[1], lo: c, hi: t, ms: t - c, here});
    if (h > 0) hidden.push({n, part: PARTS[2], lo: c - h, hi: c, ms: h, here});
  }
  return m.draw(spec, {curve, split, hidden,
                       here: [{n: s.n_gpus, images_per_s: F.images_per_s[i]}]});
});
