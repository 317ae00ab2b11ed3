// kanary live view: polls api/summary every second and draws one card per model.
// Hand-written, no dependencies; charts are inline SVG. All text from the server (service
// names, feature names) goes through textContent, never innerHTML.
'use strict';

(() => {
  const POLL_MS = 1000;        // the page must update at least every second
  const TIMEOUT_MS = 4000;     // a request slower than this counts as a failure
  const MAX_BACKOFF_MS = 5000; // retry interval ceiling while the server is unreachable
  const SVG_NS = 'http://www.w3.org/2000/svg';

  const STATE_LABELS = { waiting: 'Waiting for events', warming_up: 'Warming up', scoring: 'Scoring' };

  const ui = {
    service: document.getElementById('service'),
    uptime: document.getElementById('uptime'),
    conn: document.getElementById('conn'),
    connText: document.getElementById('conn-text'),
    connTime: document.getElementById('conn-time'),
    bannerTitle: document.getElementById('banner-title'),
    banner: document.getElementById('banner'),
    bannerText: document.getElementById('banner-text'),
    retry: document.getElementById('retry'),
    empty: document.getElementById('empty'),
    emptyTitle: document.getElementById('empty-title'),
    emptyDetail: document.getElementById('empty-detail'),
    emptyModels: document.getElementById('empty-models'),
    models: document.getElementById('models'),
  };

  let latest = null;     // last summary received
  let lastOkAt = null;   // Date of the last successful poll
  let failures = 0;      // consecutive failed polls
  let pollTimer = 0;
  let inFlight = false;
  const cards = new Map(); // model name -> card record

  // ---------------------------------------------------------------- DOM helpers

  function h(tag, attrs, ...kids) {
    const n = document.createElement(tag);
    setAttrs(n, attrs);
    for (const k of kids) if (k != null && k !== false) n.append(k);
    return n;
  }

  function s(tag, attrs, text) {
    const n = document.createElementNS(SVG_NS, tag);
    setAttrs(n, attrs);
    if (text != null) n.textContent = text;
    return n;
  }

  function setAttrs(n, attrs) {
    if (!attrs) return;
    for (const [k, v] of Object.entries(attrs)) {
      if (v == null || v === false) continue;
      if (k === 'text') n.textContent = v;
      else if (k === 'class' && !(n instanceof SVGElement)) n.className = v;
      else n.setAttribute(k, v === true ? '' : String(v));
    }
  }

  function setText(n, text) {
    const t = String(text);
    if (n.textContent !== t) n.textContent = t;
  }

  // ---------------------------------------------------------------- formatting

  const isNum = (x) => typeof x === 'number' && Number.isFinite(x);
  const DASH = '—';

  function fmtInt(x) { return isNum(x) ? String(Math.round(x)) : DASH; }

  function fmtEps(x) {
    if (!isNum(x)) return DASH;
    const a = Math.abs(x);
    if (a >= 100) return String(Math.round(x));
    if (a >= 10) return x.toFixed(1);
    return x.toFixed(2);
  }

  // 3 significant digits, no exponent for the usual ranges: 0.62, 0.0034, 12.3, 1230
  function fmtNum(x) {
    if (!isNum(x)) return DASH;
    if (x === 0) return '0';
    const a = Math.abs(x);
    if (a >= 1000) return String(Math.round(x));
    if (a < 1e-4) return x.toExponential(1);
    return String(Number(x.toPrecision(3)));
  }

  function fmtRatio(x) { return isNum(x) ? x.toFixed(3) : DASH; }

  function fmtPct(x) {
    if (!isNum(x)) return DASH;
    const p = x * 100;
    if (p === 0) return '0%';
    if (Math.abs(p) < 10) return p.toFixed(2) + '%';
    return p.toFixed(1) + '%';
  }

  function fmtLatency(sec) {
    if (!isNum(sec)) return DASH;
    if (sec < 1e-3) return Math.round(sec * 1e6) + ' µs';
    if (sec < 1) return (sec * 1e3).toFixed(sec < 0.01 ? 2 : 1) + ' ms';
    return sec.toFixed(2) + ' s';
  }

  function fmtCompact(x) {
    if (!isNum(x)) return '';
    const a = Math.abs(x);
    if (a >= 1e6) return Number((x / 1e6).toPrecision(3)) + 'M';
    if (a >= 1e4) return Number((x / 1e3).toPrecision(3)) + 'k';
    return fmtNum(x);
  }

  function fmtDuration(sec) {
    if (!isNum(sec) || sec < 0) return '';
    if (sec < 1) return sec < 0.01 ? '0 s' : sec.toFixed(2) + ' s';
    if (sec < 60) return Math.round(sec) + ' s';
    const m = Math.floor(sec / 60);
    if (m < 60) return m + ' min' + (sec % 60 >= 1 ? ' ' + String(Math.floor(sec % 60)).padStart(2, '0') + ' s' : '');
    const hr = Math.floor(m / 60);
    if (hr < 48) return hr + ' h ' + String(m % 60).padStart(2, '0') + ' min';
    return Math.floor(hr / 24) + ' d ' + (hr % 24) + ' h';
  }

  const pad2 = (n) => String(n).padStart(2, '0');

  function fmtClock(unixSec, millis) {
    if (!isNum(unixSec)) return DASH;
    const d = new Date(unixSec * 1000);
    const base = pad2(d.getHours()) + ':' + pad2(d.getMinutes()) + ':' + pad2(d.getSeconds());
    return millis ? base + '.' + String(d.getMilliseconds()).padStart(3, '0') : base;
  }

  function fmtAgo(sec) {
    if (!isNum(sec)) return '';
    if (sec < 1) return 'just now';
    return fmtDuration(sec) + ' ago';
  }


  // ---------------------------------------------------------------- charts

  function niceCeil(x) {
    if (!isNum(x) || x <= 0) return 1;
    const p = Math.pow(10, Math.floor(Math.log10(x)));
    for (const m of [1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10]) if (m * p >= x * 0.9999) return m * p;
    return 10 * p;
  }

  function quantile(values, q) {
    const v = values.filter(isNum).sort((a, b) => a - b);
    if (!v.length) return NaN;
    const i = Math.min(v.length - 1, Math.max(0, Math.round(q * (v.length - 1))));
    return v[i];
  }

  function plotSize(plot) {
    const r = plot.getBoundingClientRect();
    return { w: Math.max(160, Math.floor(r.width)), h: Math.max(80, Math.floor(r.height)) };
  }

  function showPlotMessage(plot, text) {
    plot.replaceChildren(h('div', { class: 'msg', text }));
  }

  // A time-series line chart. opt: {xs, series: [{ys, cls, area}], yMax, yFmt, label, xLabels}
  function drawLineChart(plot, opt) {
    const { w, h: H } = plotSize(plot);
    const m = { l: 46, r: 10, t: 8, b: 20 };
    const iw = w - m.l - m.r;
    const ih = H - m.t - m.b;
    const xs = opt.xs;
    const x0 = xs[0];
    const x1 = xs[xs.length - 1];
    const xMin = Math.min(x0, x1 - (opt.minSpan || 0));
    let yMax = opt.yMax;
    if (!isNum(yMax)) {
      let top = 0;
      for (const ser of opt.series) for (const y of ser.ys) if (isNum(y) && y > top) top = y;
      yMax = niceCeil(Math.max(top * 1.08, opt.yFloor || 0));
    }
    const X = (x) => m.l + (x1 === xMin ? iw : ((x - xMin) / (x1 - xMin)) * iw);
    const Y = (y) => m.t + ih - Math.min(1, Math.max(0, y / yMax)) * ih;

    const svg = s('svg', { width: w, height: H, viewBox: `0 0 ${w} ${H}`, role: 'img', 'aria-label': opt.label });
    svg.append(s('title', null, opt.label));
    for (let i = 0; i <= 2; i++) {
      const v = (yMax * i) / 2;
      const y = Math.round(Y(v)) + 0.5;
      svg.append(s('line', { class: i === 0 ? 'axis-line' : 'grid-line', x1: m.l, x2: w - m.r, y1: y, y2: y }));
      svg.append(s('text', { class: 'tick', x: m.l - 6, y: y + 4, 'text-anchor': 'end' }, opt.yFmt(v)));
    }
    svg.append(s('text', { class: 'tick', x: m.l, y: H - 4, 'text-anchor': 'start' }, opt.xLabels[0]));
    svg.append(s('text', { class: 'tick', x: w - m.r, y: H - 4, 'text-anchor': 'end' }, opt.xLabels[1]));

    for (const ser of opt.series) {
      let d = '';
      let pen = false;
      let last = null;
      const segments = [];
      let seg = [];
      ser.ys.forEach((y, i) => {
        if (!isNum(y) || !isNum(xs[i])) {
          pen = false;
          if (seg.length) segments.push(seg);
          seg = [];
          return;
        }
        const px = X(xs[i]).toFixed(1);
        const py = Y(y).toFixed(1);
        d += (pen ? 'L' : 'M') + px + ' ' + py;
        pen = true;
        seg.push([px, py]);
        last = [px, py];
      });
      if (seg.length) segments.push(seg);
      if (!last) continue;
      if (ser.area) {
        const base = Y(0).toFixed(1);
        for (const sg of segments) {
          if (sg.length < 2) continue;
          const a = 'M' + sg[0][0] + ' ' + base + sg.map((p) => 'L' + p[0] + ' ' + p[1]).join('') + 'L' + sg[sg.length - 1][0] + ' ' + base + 'Z';
          svg.append(s('path', { class: 'area ' + ser.cls, d: a }));
        }
      }
      svg.append(s('path', { class: 'line ' + ser.cls, d }));
      svg.append(s('circle', { class: 'end ' + ser.cls, cx: last[0], cy: last[1], r: 3.5 }));
    }
    plot.replaceChildren(svg);
  }

  // Recent scores as points against the threshold; flagged points and labelled anomalies marked.
  function drawScores(plot, scores, threshold, label) {
    const { w, h: H } = plotSize(plot);
    const m = { l: 46, r: 10, t: 10, b: 20 };
    const iw = w - m.l - m.r;
    const ih = H - m.t - m.b;
    const n = scores.length;
    const vals = scores.map((p) => p.score);
    let thr = threshold;
    if (!isNum(thr)) for (let i = n - 1; i >= 0; i--) if (isNum(scores[i].threshold)) { thr = scores[i].threshold; break; }
    const lo = Math.min(0, quantile(vals, 0) || 0);
    // Robust top: a single huge score must not squash everything else; it is drawn at the top edge.
    let hi = Math.max(quantile(vals, 0.99) * 1.1 || 0, isNum(thr) ? thr * 1.35 : 0);
    const flaggedMax = Math.max(0, ...scores.filter((p) => p.flagged && isNum(p.score)).map((p) => p.score));
    if (flaggedMax > hi && flaggedMax <= hi * 2) hi = flaggedMax * 1.05;
    const yMax = niceCeil(hi || 1);
    const X = (i) => m.l + (n <= 1 ? iw : (i / (n - 1)) * iw);
    const Y = (y) => m.t + ih - Math.min(1, Math.max(0, (y - lo) / (yMax - lo))) * ih;

    const svg = s('svg', { width: w, height: H, viewBox: `0 0 ${w} ${H}`, role: 'img', 'aria-label': label });
    svg.append(s('title', null, label));
    for (let i = 0; i <= 2; i++) {
      const v = lo + ((yMax - lo) * i) / 2;
      const y = Math.round(Y(v)) + 0.5;
      svg.append(s('line', { class: i === 0 ? 'axis-line' : 'grid-line', x1: m.l, x2: w - m.r, y1: y, y2: y }));
      svg.append(s('text', { class: 'tick', x: m.l - 6, y: y + 4, 'text-anchor': 'end' }, fmtNum(v)));
    }
    const t0 = scores[0].ts;
    const t1 = scores[n - 1].ts;
    const span = isNum(t0) && isNum(t1) ? t1 - t0 : NaN;
    svg.append(s('text', { class: 'tick', x: m.l, y: H - 4, 'text-anchor': 'start' },
      isNum(span) ? `${n} events over ${fmtDuration(span)}` : `${n} events`));
    svg.append(s('text', { class: 'tick', x: w - m.r, y: H - 4, 'text-anchor': 'end' }, 'latest'));

    const normal = [];
    const rings = [];
    const flagged = [];
    const over = [];
    scores.forEach((p, i) => {
      if (!isNum(p.score)) return;
      const x = X(i).toFixed(1);
      const y = Y(p.score).toFixed(1);
      if (p.score > yMax) over.push(x);
      if (p.flagged) flagged.push([x, y]);
      else normal.push([x, y]);
      if (p.label === 1) rings.push([x, y]);
    });
    // Normal points as one path of zero-length round-capped strokes: far cheaper than 300 circles.
    if (normal.length) {
      svg.append(s('path', {
        class: 'pt', d: normal.map((p) => `M${p[0]} ${p[1]}h0`).join(''),
      }));
    }
    if (isNum(thr)) {
      const ty = Y(thr).toFixed(1);
      svg.append(s('line', { class: 'thr', x1: m.l, x2: w - m.r, y1: ty, y2: ty }));
      const above = Y(thr) - m.t > 14;
      svg.append(s('text', { class: 'thr-label', x: w - m.r - 2, y: above ? +ty - 5 : +ty + 13, 'text-anchor': 'end' },
        'threshold ' + fmtNum(thr)));
    }
    for (const [x, y] of rings) svg.append(s('circle', { class: 'pt-label', cx: x, cy: y, r: 5.5 }));
    for (const [x, y] of flagged) svg.append(s('circle', { class: 'pt-flag', cx: x, cy: y, r: 3.6 }));
    for (const x of over) svg.append(s('path', { class: 'pt-over', d: `M${x} ${m.t - 6}l-4 7h8z` }));
    plot.replaceChildren(svg);
  }

  // ---------------------------------------------------------------- model cards

  function stat(field, label, o = {}) {
    const num = h('span', { class: 'num', 'data-field': field, text: DASH });
    const dd = h('dd', null, num, o.unit ? h('span', { class: 'unit', text: o.unit }) : null);
    const hint = o.hint ? h('span', { class: 'hint', 'data-hint': field }) : null;
    if (hint) dd.append(hint);
    const node = h('div', { class: 'stat' + (o.accent ? ' accent' : ''), title: o.title }, h('dt', { text: label }), dd);
    return { node, num, hint };
  }

  // The server names each model (its title comes from kanary's model registry).
  function buildCard(name, title) {
    const id = 'model-' + String(name).replace(/[^A-Za-z0-9_-]/g, '_');
    const badge = h('span', { class: 'badge', 'data-field': 'state', 'data-state': 'waiting', text: STATE_LABELS.waiting });
    const invalid = h('span', { class: 'invalid', 'data-field': 'invalid', hidden: true });
    const head = h('header', { class: 'card-head' },
      h('h2', { id: id + '-title' },
        title ? h('span', { text: title }) : null,
        h('span', { class: 'model-id', title: 'model', text: name })),
      h('div', { class: 'head-right' }, invalid, badge));

    const st = {
      events: stat('events', 'Events', { title: 'Events received by this model' }),
      scored: stat('scored', 'Scored', { title: 'Events scored (events after warm-up)' }),
      anomalies: stat('anomalies', 'Anomalies', { title: 'Events flagged as anomalous' }),
      throughput: stat('throughput', 'Throughput', { unit: 'ev/s', title: 'Events per second, over the last second' }),
      anomaly_rate: stat('anomaly_rate', 'Anomaly rate', { title: 'Flagged / scored over the recent window' }),
      latency: stat('latency', 'Latency', { title: "The last event's event-to-detection latency" }),
      threshold: stat('threshold', 'Threshold', { hint: true, title: 'Scores at or above it are flagged' }),
      f1: stat('f1', 'F1', { hint: true, title: 'Over labelled events: F1, precision (P) and recall (R)' }),
    };
    const stats = h('dl', { class: 'stats' }, ...Object.values(st).map((x) => x.node));
    const wait = h('p', { class: 'card-wait', hidden: true, text: 'Waiting for events…' });

    const chart = (key, caption, wide) => {
      const now = h('span', { class: 'now' });
      const plot = h('div', { class: 'plot' });
      const fig = h('figure', { class: 'chart' + (wide ? ' wide' : ''), 'data-chart': key },
        h('figcaption', null, h('span', { text: caption }), now), plot);
      return { fig, plot, now };
    };
    const thr = chart('throughput', 'Throughput · events/s');
    const rate = chart('anomaly_rate', 'Anomaly rate');

    const legendQ = h('span', { class: 'legend' });
    const lp = h('span', null, h('i', { class: 'sw precision' }), 'Precision ', h('b'));
    const lr = h('span', null, h('i', { class: 'sw recall' }), 'Recall ', h('b'));
    const lf = h('span', null, h('i', { class: 'sw f1' }), 'F1 ', h('b'));
    legendQ.append(lp, lr, lf);
    const qPlot = h('div', { class: 'plot' });
    const qNote = h('p', { class: 'note', hidden: true,
      text: 'No labels in this stream: precision, recall and F1 need events with a "label" field (0 or 1).' });
    const quality = h('figure', { class: 'chart wide', 'data-chart': 'quality' },
      h('figcaption', null, h('span', { text: 'Precision · recall · F1' }), legendQ), qPlot, qNote);

    const legendS = h('span', { class: 'legend' },
      h('span', null, h('i', { class: 'mk score' }), 'score'),
      h('span', null, h('i', { class: 'mk flag' }), 'flagged'),
      h('span', null, h('i', { class: 'sw threshold' }), 'threshold'));
    const labelKey = h('span', null, h('i', { class: 'mk label' }), 'labelled anomaly');
    legendS.append(labelKey);
    const sPlot = h('div', { class: 'plot' });
    const scores = h('figure', { class: 'chart wide', 'data-chart': 'scores' },
      h('figcaption', null, h('span', { text: 'Recent scores vs threshold' }), legendS), sPlot);

    const charts = h('div', { class: 'charts' }, thr.fig, rate.fig, quality, scores);

    const count = h('span', { class: 'count' });
    const truthTh = h('th', { scope: 'col', class: 'num', text: 'Score' });
    const tbody = h('tbody');
    const table = h('table', null,
      h('caption', { class: 'sr-only', text: `Latest anomalies flagged by ${name}` }),
      h('thead', null, h('tr', null,
        h('th', { scope: 'col', text: 'Time' }),
        h('th', { scope: 'col', text: 'Service' }),
        truthTh,
        h('th', { scope: 'col', class: 'feats', text: 'Top contributing features' }))),
      tbody);
    const more = h('button', { type: 'button', class: 'more', hidden: true, 'aria-expanded': 'false' });
    const tableWrap = h('div', { class: 'table-wrap', hidden: true }, table, more);
    const none = h('p', { class: 'none', text: 'No anomalies flagged yet.' });
    const anoms = h('section', { class: 'anoms', 'aria-label': `Latest anomalies, ${name}` },
      h('h3', null, 'Latest anomalies', count), tableWrap, none);

    const node = h('article', { class: 'card', 'data-model': name, 'aria-labelledby': id + '-title' },
      head, stats, wait, charts, anoms);

    const rec = {
      name, node, badge, invalid, st, wait, charts,
      thr, rate, qPlot, qNote, legendQ, lp, lr, lf, sPlot, labelKey,
      count, tbody, tableWrap, none, more, expanded: false, data: null, width: 0,
    };
    more.addEventListener('click', () => {
      rec.expanded = !rec.expanded;
      if (rec.data && latest) updateAnomalies(rec, rec.data, latest);
    });
    return rec;
  }

  function updateCard(c, m, summary) {
    c.data = m;
    const state = STATE_LABELS[m.state] ? m.state : (m.events > 0 ? 'scoring' : 'waiting');
    c.badge.dataset.state = state;
    setText(c.badge, STATE_LABELS[state]);

    const inv = isNum(m.invalid) ? m.invalid : 0;
    c.invalid.hidden = inv <= 0;
    setText(c.invalid, inv > 0 ? `${inv} invalid` : '');
    c.invalid.title = inv > 0 ? `${inv} events rejected as invalid (sent to the dead-letter topic)` : '';

    setText(c.st.events.num, fmtInt(m.events));
    setText(c.st.scored.num, fmtInt(m.scored));
    setText(c.st.anomalies.num, fmtInt(m.anomalies));
    setText(c.st.throughput.num, fmtEps(m.throughput_eps));
    setText(c.st.anomaly_rate.num, fmtPct(m.anomaly_rate));
    setText(c.st.latency.num, fmtLatency(m.latency_seconds));
    setText(c.st.threshold.num, isNum(m.threshold) ? fmtNum(m.threshold) : DASH);
    setText(c.st.threshold.hint, isNum(m.threshold) ? '' : (state === 'scoring' ? 'not set' : 'after warm-up'));
    c.st.anomalies.node.classList.toggle('accent', m.anomalies > 0);
    setText(c.st.f1.num, m.labelled ? fmtRatio(m.f1) : DASH);
    setText(c.st.f1.hint, m.labelled
      ? `P ${fmtRatio(m.precision).replace(/^0\./, '.')} · R ${fmtRatio(m.recall).replace(/^0\./, '.')}`
      : 'no labels');

    const noEvents = !(m.events > 0);
    c.wait.hidden = !noEvents;
    c.charts.hidden = noEvents;
    if (noEvents) setText(c.wait, 'Waiting for events… nothing has reached this model yet.');
    else drawCharts(c);

    updateAnomalies(c, m, summary);
  }

  function drawCharts(c) {
    const m = c.data;
    if (!m || c.charts.hidden) return;
    const hist = Array.isArray(m.history) ? m.history.filter((p) => p && isNum(p.t)) : [];
    const xs = hist.map((p) => p.t);
    const span = xs.length > 1 ? xs[xs.length - 1] - xs[0] : 0;
    const xLabels = ['−' + fmtDuration(Math.max(span, 10)), 'now'];

    setText(c.thr.now, `now ${fmtEps(m.throughput_eps)}`);
    setText(c.rate.now, `now ${fmtPct(m.anomaly_rate)}`);
    if (xs.length === 0) {
      showPlotMessage(c.thr.plot, 'Collecting the first second of data…');
      showPlotMessage(c.rate.plot, 'Collecting the first second of data…');
    } else {
      drawLineChart(c.thr.plot, {
        xs, minSpan: 10, xLabels, yFmt: fmtCompact, yFloor: 1,
        series: [{ ys: hist.map((p) => p.throughput_eps), cls: 's-throughput', area: true }],
        label: `Throughput over the last ${fmtDuration(span)}; now ${fmtEps(m.throughput_eps)} events per second`,
      });
      drawLineChart(c.rate.plot, {
        xs, minSpan: 10, xLabels, yFmt: fmtPct, yFloor: 0.01,
        series: [{ ys: hist.map((p) => p.anomaly_rate), cls: 's-rate', area: true }],
        label: `Anomaly rate over the last ${fmtDuration(span)}; now ${fmtPct(m.anomaly_rate)}`,
      });
    }

    c.qPlot.hidden = !m.labelled;
    c.legendQ.hidden = !m.labelled;
    c.qNote.hidden = !!m.labelled;
    if (m.labelled) {
      setText(c.lp.lastChild, fmtRatio(m.precision));
      setText(c.lr.lastChild, fmtRatio(m.recall));
      setText(c.lf.lastChild, fmtRatio(m.f1));
      const anyQ = hist.some((p) => isNum(p.precision) || isNum(p.recall) || isNum(p.f1));
      if (!anyQ) {
        showPlotMessage(c.qPlot, 'Not defined yet: no labelled anomaly has been seen or flagged.');
      } else {
        drawLineChart(c.qPlot, {
          xs, minSpan: 10, xLabels, yMax: 1, yFmt: (v) => v.toFixed(1),
          series: [
            { ys: hist.map((p) => p.precision), cls: 's-precision' },
            { ys: hist.map((p) => p.recall), cls: 's-recall' },
            { ys: hist.map((p) => p.f1), cls: 's-f1' },
          ],
          label: `Precision ${fmtRatio(m.precision)}, recall ${fmtRatio(m.recall)}, F1 ${fmtRatio(m.f1)}`,
        });
      }
    }

    c.labelKey.hidden = !m.labelled;
    const scores = Array.isArray(m.recent_scores) ? m.recent_scores.filter((p) => p && isNum(p.score)) : [];
    if (!scores.length) {
      showPlotMessage(c.sPlot, m.state === 'warming_up'
        ? 'Warming up: the model is learning what normal looks like before it scores.'
        : 'No scores yet.');
    } else {
      const nFlag = scores.filter((p) => p.flagged).length;
      drawScores(c.sPlot, scores, m.threshold,
        `Last ${scores.length} scores against threshold ${fmtNum(m.threshold)}; ${nFlag} flagged`);
    }
    c.width = c.node.clientWidth;
  }

  // Each feature keeps one colour for the whole session; the seed scenario's three come first.
  const FEATURE_COLOURS = 6;
  const featureIndex = new Map([['latency', 0], ['cpu', 1], ['memory', 2]]);
  function featureColour(name) {
    if (!featureIndex.has(name)) featureIndex.set(name, featureIndex.size % FEATURE_COLOURS);
    return 'fc' + featureIndex.get(name);
  }

  // Top contributing features: one stacked bar plus "latency 82% · cpu 10% · memory 8%".
  function contributionCell(contrib) {
    const entries = contrib && typeof contrib === 'object'
      ? Object.entries(contrib).filter(([, v]) => isNum(v) && v !== 0) : [];
    const total = entries.reduce((a, [, v]) => a + Math.abs(v), 0);
    if (!entries.length || total <= 0) return h('span', { class: 'no-contrib', text: DASH });
    entries.sort((a, b) => Math.abs(b[1]) - Math.abs(a[1]));
    const bar = h('span', { class: 'stack', 'aria-hidden': 'true' });
    const words = h('span', { class: 'words' });
    entries.forEach(([k, v], i) => {
      const share = Math.abs(v) / total;
      const seg = h('span', { class: 'seg ' + featureColour(k), title: `${k} ${Math.round(share * 100)}%` });
      seg.style.width = (share * 100).toFixed(2) + '%';
      bar.append(seg);
      if (i < 3) {
        if (i) words.append(h('span', { class: 'sep', text: ' · ', 'aria-hidden': 'true' }));
        words.append(h('span', { class: 'w' },
          h('i', { class: 'key ' + featureColour(k), 'aria-hidden': 'true' }),
          h('span', { class: 'fname', text: k }), ' ', h('b', { text: Math.round(share * 100) + '%' })));
      }
    });
    if (entries.length > 3) words.append(h('span', { class: 'sep', text: ` · +${entries.length - 3}` }));
    return h('div', { class: 'contrib' }, bar, words);
  }

  const ROWS_FOLDED = 8;

  function updateAnomalies(c, m, summary) {
    const list = Array.isArray(m.recent_anomalies) ? m.recent_anomalies.filter(Boolean) : [];
    const now = isNum(summary.generated_at) ? summary.generated_at : Date.now() / 1000;
    setText(c.count, list.length ? `newest first · ${fmtInt(m.anomalies)} in total` : '');
    c.tableWrap.hidden = !list.length;
    c.none.hidden = !!list.length;
    if (!list.length) {
      setText(c.none, m.events > 0 ? 'No anomalies flagged yet.' : 'No events yet.');
      c.tbody.replaceChildren();
      c.more.hidden = true;
      return;
    }
    const shown = c.expanded ? list : list.slice(0, ROWS_FOLDED);
    const rows = shown.map((a) => {
      const time = h('time', { text: fmtClock(a.ts, true) });
      if (isNum(a.ts)) time.setAttribute('datetime', new Date(a.ts * 1000).toISOString());
      const scoreCell = h('td', { class: 'score' },
        h('b', { text: fmtNum(a.score) }),
        isNum(a.threshold) ? h('span', { class: 'of', text: ` / ${fmtNum(a.threshold)}`, title: 'threshold' }) : null);
      if (m.labelled && (a.label === 0 || a.label === 1)) {
        scoreCell.append(h('span', a.label === 1
          ? { class: 'truth tp', text: '✓ true', title: 'Labelled anomalous: a true positive' }
          : { class: 'truth fp', text: '✗ false', title: 'Labelled normal: a false positive' }));
      }
      return h('tr', null,
        h('td', { class: 'time' }, time, h('span', { class: 'ago', text: fmtAgo(now - a.ts) })),
        h('td', { class: 'svc', text: a.service == null ? DASH : String(a.service) }),
        scoreCell,
        h('td', { class: 'feats' }, contributionCell(a.contributions)));
    });
    c.tbody.replaceChildren(...rows);
    const hiddenRows = list.length - ROWS_FOLDED;
    c.more.hidden = hiddenRows <= 0;
    c.more.setAttribute('aria-expanded', String(!!c.expanded));
    setText(c.more, c.expanded ? 'Show fewer' : `Show ${hiddenRows} more`);
  }

  // ---------------------------------------------------------------- page state

  function where() { return location.host || 'this page'; }

  function showEmpty(summary, models) {
    ui.empty.hidden = false;
    ui.models.hidden = true;
    if (!summary) return;
    const svc = summary.service || 'kanary';
    setText(ui.emptyTitle, 'Waiting for events…');
    setText(ui.emptyDetail, models.length
      ? `Connected to ${svc} at ${where()}. No events have reached the detectors yet; this page updates every second and the charts appear with the first event.`
      : `Connected to ${svc} at ${where()}. No detector is running yet; models appear here once they start.`);
    const items = models.map((m) => {
      const st = STATE_LABELS[m.state] ? m.state : 'waiting';
      return h('li', null, h('span', { class: 'badge', 'data-state': st, text: `${m.model} · ${STATE_LABELS[st].toLowerCase()}` }));
    });
    ui.emptyModels.replaceChildren(...items);
  }

  function render(summary) {
    const models = Array.isArray(summary.models) ? summary.models.filter((m) => m && m.model != null) : [];
    const svc = summary.service || 'kanary';
    setText(ui.service, svc);
    setText(ui.uptime, isNum(summary.uptime_seconds) ? 'up ' + fmtDuration(summary.uptime_seconds) : '');
    document.title = `${svc} · kanary live`;

    const total = models.reduce((a, m) => a + (isNum(m.events) ? m.events : 0), 0);
    if (!models.length || total <= 0) {
      showEmpty(summary, models);
      return;
    }
    ui.empty.hidden = true;
    ui.models.hidden = false;

    const seen = new Set();
    let prev = null;
    for (const m of models) {
      const name = String(m.model);
      seen.add(name);
      let c = cards.get(name);
      if (!c) {
        c = buildCard(name, m.title ? String(m.title) : '');
        cards.set(name, c);
      }
      // keep the server's order
      const want = prev ? prev.nextSibling : ui.models.firstChild;
      if (c.node !== want) ui.models.insertBefore(c.node, want);
      prev = c.node;
      updateCard(c, m, summary);
    }
    for (const [name, c] of cards) {
      if (!seen.has(name)) {
        c.node.remove();
        cards.delete(name);
      }
    }
  }

  // Only the state word is a live region; the clock next to it changes every second.
  function setConn(state, text, time) {
    ui.conn.dataset.conn = state;
    setText(ui.connText, text);
    setText(ui.connTime, time ? ' · ' + time : '');
  }

  function onSuccess(summary) {
    failures = 0;
    latest = summary;
    lastOkAt = new Date();
    ui.banner.hidden = true;
    setText(ui.bannerTitle, '');
    document.body.classList.remove('stale');
    setConn('live', 'Live', fmtClock(lastOkAt.getTime() / 1000));
    const dot = ui.conn.querySelector('.dot');
    dot.classList.remove('beat');
    void dot.offsetWidth; // restart the animation
    dot.classList.add('beat');
    try {
      render(summary);
    } catch (err) {
      console.error('kanary live view: render failed', err);
    }
  }

  function onFailure(err, retryMs) {
    failures += 1;
    const why = err && err.name === 'AbortError' ? 'no answer within ' + TIMEOUT_MS / 1000 + ' s'
      : (err && err.message) || 'request failed';
    const retryIn = Math.round(retryMs / 1000);
    setConn('lost', 'Connection lost · retrying');
    ui.banner.hidden = false;
    setText(ui.bannerTitle, `Connection to kanary at ${where()} lost.`);
    document.body.classList.add('stale');
    const since = lastOkAt ? ` Showing data from ${fmtClock(lastOkAt.getTime() / 1000)}.` : '';
    setText(ui.bannerText, `${why}; retrying in ${retryIn} s (attempt ${failures}).${since}`);
    if (!latest) {
      ui.empty.hidden = false;
      ui.models.hidden = true;
      setText(ui.emptyTitle, 'Cannot reach kanary');
      setText(ui.emptyDetail, `No answer from ${where()} yet. Is kanary still running? Retrying automatically.`);
    }
  }

  async function poll() {
    clearTimeout(pollTimer);
    if (inFlight) return;
    inFlight = true;
    const started = performance.now();
    const ctrl = new AbortController();
    const timeout = setTimeout(() => ctrl.abort(), TIMEOUT_MS);
    let summary = null;
    let error = null;
    try {
      const res = await fetch('api/summary', { cache: 'no-store', signal: ctrl.signal, headers: { Accept: 'application/json' } });
      if (!res.ok) throw new Error(`HTTP ${res.status}`);
      summary = await res.json();
      if (!summary || typeof summary !== 'object') throw new Error('unexpected response');
    } catch (err) {
      error = err;
    } finally {
      clearTimeout(timeout);
      inFlight = false;
    }
    let delay;
    if (error) {
      // 1 s, 2 s, 4 s, then every 5 s; onFailure counts the failure
      delay = Math.min(POLL_MS * Math.pow(2, failures), MAX_BACKOFF_MS);
      onFailure(error, delay);
    } else {
      onSuccess(summary);
      delay = Math.max(0, POLL_MS - (performance.now() - started));
    }
    pollTimer = setTimeout(poll, delay);
  }

  ui.retry.addEventListener('click', () => {
    setText(ui.bannerText, 'retrying now…');
    poll();
  });

  // Redraw charts when a card changes width (window resize, rotation, cards reflowing).
  let resizeQueued = false;
  const redrawAll = () => {
    resizeQueued = false;
    for (const c of cards.values()) if (c.data && c.node.clientWidth !== c.width) drawCharts(c);
  };
  window.addEventListener('resize', () => {
    if (!resizeQueued) {
      resizeQueued = true;
      requestAnimationFrame(redrawAll);
    }
  });

  // Poll straight away when the tab becomes visible again.
  document.addEventListener('visibilitychange', () => {
    if (document.visibilityState === 'visible' && !inFlight) poll();
  });

  showEmpty(null, []);
  setText(ui.emptyTitle, 'Connecting…');
  setText(ui.emptyDetail, `Connecting to kanary at ${where()}…`);
  poll();
})();
