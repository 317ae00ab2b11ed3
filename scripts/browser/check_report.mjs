#!/usr/bin/env node
// Opens a `kanary eval --report` HTML file in a real headless Chromium, checks that it renders
// its charts, and saves a screenshot.
//
//   node check_report.mjs --report FILE.html --out DIR --models if,ae
//
// Checks: one table row per model; a precision-recall chart with one curve per model; a
// score-over-time chart (with drawn score paths and a threshold line) per model and service;
// no console errors and no network requests (the report is self-contained). Saves
// DIR/report.png (full page). Prints one JSON line; exits 1 on failure.

import { mkdirSync } from 'node:fs';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { chromium } from 'playwright-core';

const args = Object.fromEntries(
  process.argv.slice(2).reduce((acc, a, i, all) => (a.startsWith('--') ? [...acc, [a.slice(2), all[i + 1]]] : acc), []),
);
if (!args.report || !args.out || !args.models) {
  console.error('usage: node check_report.mjs --report FILE.html --out DIR --models if,ae');
  process.exit(2);
}
const models = args.models.split(',');
mkdirSync(args.out, { recursive: true });
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
const fail = async (msg) => {
  console.error(`check_report: ${msg}`);
  await browser.close();
  process.exit(1);
};
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  const errors = [];
  const requests = [];
  page.on('console', (m) => { if (m.type() === 'error') errors.push(m.text()); });
  page.on('pageerror', (e) => errors.push(String(e)));
  page.on('request', (r) => { if (!r.url().startsWith('file:')) requests.push(r.url()); });
  await page.goto(pathToFileURL(path.resolve(args.report)).href, { waitUntil: 'load' });
  const info = await page.evaluate(() => ({
    rows: [...document.querySelectorAll('tbody tr')].map((tr) => tr.cells[0].textContent.trim()),
    svgs: document.querySelectorAll('svg').length,
    prCurves: document.querySelectorAll('svg[aria-label="precision-recall curves"] path').length,
    timeCharts: [...document.querySelectorAll('svg[aria-label^="scores of"]')].map((s) => ({
      paths: [...s.querySelectorAll('path')].filter((p) => (p.getAttribute('d') || '').length > 100).length,
      threshold: s.querySelectorAll('line[stroke-dasharray]').length,
      box: s.getBoundingClientRect().width,
    })),
  }));
  await page.screenshot({ path: path.join(args.out, 'report.png'), fullPage: true });
  if (errors.length) await fail(`console errors: ${errors.join('; ')}`);
  if (requests.length) await fail(`network requests from a self-contained report: ${requests.join(', ')}`);
  for (const m of models) if (!info.rows.includes(m)) await fail(`no table row for ${m}: ${info.rows}`);
  if (info.prCurves < models.length) await fail(`${info.prCurves} precision-recall curves for ${models.length} models`);
  if (info.timeCharts.length < models.length) await fail(`${info.timeCharts.length} score charts`);
  for (const c of info.timeCharts) {
    if (c.paths < 1 || c.threshold < 1 || c.box < 200) await fail(`an empty score chart: ${JSON.stringify(c)}`);
  }
  console.log(JSON.stringify({ ok: true, report: args.report, ...info, timeCharts: info.timeCharts.length, screenshot: path.join(args.out, 'report.png') }));
} catch (e) {
  await fail(String(e));
}
await browser.close();
