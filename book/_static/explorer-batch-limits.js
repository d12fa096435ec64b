// Chapter 7's explorer (mgpu_lab.figures.explorers.batch_limits): the predicted largest
// batch per GPU and for N GPUs, and one GPU's memory at that split, as a stacked bar.
// Runs on mgpu-explorer.js; m.data holds per_gpu for every GPU x image size x depth x
// optimizer x sharding x precision x recomputation x N, flattened in that order, and the
// memory parts factored: state[size x depth][precision][optimizer][sharding][N - 1]
// (parameters, gradients, optimizer) and step[size x depth][how][split] (activations,
// other; how: "fp16+recompute" and the like, explorers.how_key); see explorers.limits_parts.
mgpuExplorers.register('batch-limits', function update(m, s) {
  const PARTS = m.data.parts;
  const spec = {
    width: 540, height: 46, padding: {left: 5, right: 20, top: 5, bottom: 5},
    title: {text: "Where the busiest GPU's memory goes at its largest split (predicted)"},
    layer: [
      {data: {name: 'table'}, mark: 'bar',
       encoding: {
         x: {field: 'gib', type: 'quantitative', stack: 'zero',
             title: 'memory of one GPU (GiB)'},
         color: {field: 'part', type: 'nominal', scale: {domain: PARTS},
                 legend: {orient: 'bottom', title: null}},
         order: {field: 'order'},
         tooltip: [{field: 'part'}, {field: 'gib', format: '.3f', title: 'GiB'}]}},
      {data: {name: 'cap'}, mark: {type: 'rule', color: 'black', strokeDash: [4, 3],
                                   strokeWidth: 2},
       encoding: {x: {field: 'gib', type: 'quantitative'}}},
      {data: {name: 'cap'}, mark: {type: 'text', align: 'right', dx: -4, baseline: 'bottom'},
       encoding: {x: {field: 'gib', type: 'quantitative'}, y: {value: -2},
                  text: {field: 'label'}}}]};
  const i = m.at(s), per = m.data.per_gpu[i], key = s.image_size + 'x' + s.depth;
  const state = m.data.state[key][s.precision][s.optimizer][s.sharding][
    m.data.axes.n_gpus.indexOf(s.n_gpus)];
  const how = s.precision + (s.recompute ? '+recompute' : '');  // explorers.how_key
  const bytes = state.concat(m.data.step[key][how][String(Math.max(per, 1))]);
  const gpu = m.data.gpus[s.gpu];
  for (const a of ['gpu', 'image_size', 'depth', 'optimizer', 'n_gpus']) m.show(a, s[a]);
  m.show('sharding', m.data.sharding_labels[m.data.axes.sharding.indexOf(s.sharding)]);
  m.show('precision', m.data.precision_labels[m.data.axes.precision.indexOf(s.precision)]);
  m.show('recompute', m.data.recompute_labels[m.data.axes.recompute.indexOf(s.recompute)]);
  m.show('gpu_gib', gpu.memory_bytes, 'gib0');
  m.show('per_gpu', per, 'int');
  m.show('global_batch', s.n_gpus * per, 'int');  // max_batch_size(n_devices=N, sharding=...)
  m.show('source', gpu.source);
  m.show('none_fits', per ? '' : ' Not even one image fits: the bar shows one image.');
  const rows = PARTS.map((p, k) => ({part: p, gib: bytes[k] / 2 ** 30, order: k}));
  PARTS.forEach((p, k) => m.show('bytes_' + p, bytes[k], 'gib'));
  m.show('bytes_total', bytes.reduce((a, b) => a + b, 0), 'gib');
  return m.draw(spec, {table: rows,
                       cap: [{gib: gpu.usable_bytes / 2 ** 30,
                              label: s.gpu + ' memory less the reserve'}]});
});
