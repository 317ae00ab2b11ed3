#!/usr/bin/env node
// Loads kanary's live view in a real headless Chromium and checks that it is alive.
//
//   node check_page.mjs --url http://127.0.0.1:PORT/ --out DIR [--models if,ae]
//                       [--wait-ms 2500] [--timeout-ms 30000] [--chromium /usr/bin/chromium]
//
// Waits until every model card shows a number for events, records events/anomalies/throughput,
// waits, checks the figures changed while the page stayed open, loads the page again and checks
// that every model's events figure increased. Fails on console errors, failed requests, a visible
// empty or connection-lost state, or horizontal scrolling on a phone. Saves DIR/page.png (1400 px
// wide, full page) and DIR/page-phone.png (390 px wide). Prints one JSON line; exits 1 on failure
// (2 on bad usage).

import { mkdirSync } from 'node:fs';
import path from 'node:path';
import { chromium } from 'playwright-core';

const FLAGS = [
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--disable-dev-shm-usage',
];

function usage(msg) {
  if (msg) console.error(`check_page: ${msg}`);
  console.error('usage: node check_page.mjs --url http://127.0.0.1:PORT/ --out DIR [--models if,ae] '
    + '[--wait-ms 2500] [--timeout-ms 30000] [--chromium PATH]');
  process.exit(2);
}

function parseArgs(argv) {
  const o = {
    url: null,
    out: null,
    models: null,
    waitMs: 2500,
    timeoutMs: 30000,
    chromium: process.env.CHROMIUM || '/usr/bin/chromium',
  };
  for (let i = 0; i < argv.length; i++) {
    let a = argv[i];
    let v;
    const eq = a.indexOf('=');
    if (a.startsWith('--') && eq > 0) {
      v = a.slice(eq + 1);
      a = a.slice(0, eq);
    }
    const val = () => {
      if (v !== undefined) return v;
      if (i + 1 >= argv.length) usage(`${a} needs a value`);
      return argv[++i];
    };
    switch (a) {
      case '--url': o.url = val(); break;
      case '--out': o.out = val(); break;
      case '--models': o.models = val().split(',').map((x) => x.trim()).filter(Boolean); break;
      case '--wait-ms': o.waitMs = Number(val()); break;
      case '--timeout-ms': o.timeoutMs = Number(val()); break;
      case '--chromium': o.chromium = val(); break;
      case '-h': case '--help': usage(); break;
      default: usage(`unknown argument ${a}`);
    }
  }
  if (!o.url) usage('--url is required');
  if (!o.out) usage('--out is required');
  if (!Number.isFinite(o.waitMs) || o.waitMs < 0) usage('--wait-ms must be a number');
  if (!Number.isFinite(o.timeoutMs) || o.timeoutMs <= 0) usage('--timeout-ms must be a positive number');
  try {
    new URL(o.url);
  } catch {
    usage(`--url is not a URL: ${o.url}`);
  }
  if (o.models && !o.models.length) usage('--models is empty');
  return o;
}

class CheckError extends Error {}
const fail = (msg) => { throw new CheckError(msg); };

// Collects everything the page complains about.
function watch(page, label, problems, origin) {
  page.on('console', (msg) => {
    if (msg.type() === 'error') problems.push(`${label}: console error: ${msg.text()}`);
  });
  page.on('pageerror', (err) => problems.push(`${label}: uncaught exception: ${err.message}`));
  page.on('requestfailed', (req) => {
    const why = req.failure()?.errorText || 'failed';
    if (why.includes('ERR_ABORTED')) return; // in-flight poll cancelled by our own reload
    problems.push(`${label}: request failed: ${req.method()} ${req.url()} (${why})`);
  });
  page.on('response', (res) => {
    if (res.status() >= 400 && res.url().startsWith(origin)) {
      problems.push(`${label}: HTTP ${res.status()} for ${res.url()}`);
    }
  });
}

// Waits until the expected cards (or, without --models, at least one card) show numeric events.
async function waitForCards(page, models, timeoutMs, what) {
  try {
    await page.waitForFunction((want) => {
      const visible = (el) => !!el && el.getClientRects().length > 0;
      const cards = [...document.querySelectorAll('[data-model]')];
      const names = want || cards.map((c) => c.getAttribute('data-model'));
      if (!names.length) return false;
      return names.every((m) => {
        const card = cards.find((c) => c.getAttribute('data-model') === m);
        const ev = card && card.querySelector('[data-field="events"]');
        return visible(card) && visible(ev) && /^\s*-?\d+(\.\d+)?\s*$/.test(ev.textContent);
      });
    }, models, { timeout: timeoutMs, polling: 100 });
  } catch (err) {
    const state = await pageState(page).catch(() => null);
    fail(`${what}: model cards did not show event counts within ${timeoutMs} ms`
      + (models ? ` (expected models: ${models.join(',')})` : '')
      + (state ? `; page shows: ${JSON.stringify(state)}` : `; ${err.message}`));
  }
}

async function pageState(page) {
  return page.evaluate(() => {
    const visible = (el) => !!el && !el.hidden && el.getClientRects().length > 0;
    const empty = document.querySelector('[data-empty-state]');
    const lost = document.querySelector('[data-connection-lost]');
    return {
      cards: [...document.querySelectorAll('[data-model]')].map((c) => c.getAttribute('data-model')),
      empty_state: visible(empty) ? empty.innerText.trim().replace(/\s+/g, ' ').slice(0, 200) : null,
      connection_lost: visible(lost) ? lost.innerText.trim().replace(/\s+/g, ' ').slice(0, 200) : null,
    };
  });
}

async function readFigures(page, models) {
  return page.evaluate((names) => {
    const num = (el) => {
      if (!el) return null;
      const t = el.textContent.replace(/[\s,]/g, '');
      return /^-?\d+(\.\d+)?$/.test(t) ? Number(t) : null;
    };
    const out = {};
    for (const m of names) {
      const card = [...document.querySelectorAll('[data-model]')].find((c) => c.getAttribute('data-model') === m);
      const f = (name) => num(card && card.querySelector(`[data-field="${name}"]`));
      out[m] = { events: f('events'), anomalies: f('anomalies'), throughput: f('throughput'), f1: f('f1') };
    }
    return out;
  }, models);
}

async function discoverModels(page) {
  return page.evaluate(() => [...document.querySelectorAll('[data-model]')].map((c) => c.getAttribute('data-model')));
}

function changed(a, b) {
  return a.events !== b.events || a.anomalies !== b.anomalies || a.throughput !== b.throughput;
}

async function main() {
  const opt = parseArgs(process.argv.slice(2));
  mkdirSync(opt.out, { recursive: true });
  const origin = new URL(opt.url).origin;
  const problems = [];
  const result = { ok: false, url: opt.url, models: {}, screenshots: [] };
  let browser;
  let page;
  try {
    try {
      browser = await chromium.launch({ executablePath: opt.chromium, headless: true, args: FLAGS, timeout: 60000 });
    } catch (err) {
      fail(`cannot launch Chromium at ${opt.chromium}: ${err.message.split('\n')[0]}`);
    }
    result.browser = browser.version();

    // ---- wide screen: first load, live update, second load
    const wide = await browser.newContext({ viewport: { width: 1400, height: 900 }, deviceScaleFactor: 1 });
    page = await wide.newPage();
    watch(page, 'wide', problems, origin);
    const resp = await page.goto(opt.url, { waitUntil: 'load', timeout: opt.timeoutMs }).catch((err) => {
      fail(`cannot load ${opt.url}: ${err.message.split('\n')[0]}`);
    });
    if (!resp || !resp.ok()) fail(`loading ${opt.url} answered HTTP ${resp ? resp.status() : '(none)'}`);

    await waitForCards(page, opt.models, opt.timeoutMs, 'first load');
    const models = opt.models || await discoverModels(page);
    const first = await readFigures(page, models);

    await page.waitForTimeout(opt.waitMs);
    const live = await readFigures(page, models);
    const stuck = models.filter((m) => !changed(first[m], live[m]));
    if (stuck.length) {
      fail(`figures did not change while the page stayed open for ${opt.waitMs} ms: `
        + stuck.map((m) => `${m} ${JSON.stringify(first[m])}`).join('; '));
    }

    await page.reload({ waitUntil: 'load', timeout: opt.timeoutMs });
    await waitForCards(page, models, opt.timeoutMs, 'second load');
    const second = await readFigures(page, models);

    for (const m of models) {
      result.models[m] = {
        events: [first[m].events, second[m].events],
        anomalies: [first[m].anomalies, second[m].anomalies],
        throughput: [first[m].throughput, second[m].throughput],
        f1: second[m].f1,
      };
    }
    const notIncreased = models.filter((m) => !(second[m].events > first[m].events));
    if (notIncreased.length) {
      fail('events figure did not increase between the two loads: '
        + notIncreased.map((m) => `${m} ${first[m].events} -> ${second[m].events}`).join('; '));
    }

    const state = await pageState(page);
    if (state.empty_state) fail(`the empty state is shown: "${state.empty_state}"`);
    if (state.connection_lost) fail(`the connection-lost banner is shown: "${state.connection_lost}"`);

    // give the charts one more poll, then photograph the full page
    await page.waitForTimeout(1100);
    const widePng = path.join(opt.out, 'page.png');
    await page.screenshot({ path: widePng, fullPage: true });
    result.screenshots.push(widePng);

    // ---- phone
    const phone = await browser.newContext({
      viewport: { width: 390, height: 844 }, deviceScaleFactor: 1, isMobile: true, hasTouch: true,
    });
    const ppage = await phone.newPage();
    watch(ppage, 'phone', problems, origin);
    await ppage.goto(opt.url, { waitUntil: 'load', timeout: opt.timeoutMs });
    await waitForCards(ppage, models, opt.timeoutMs, 'phone load');
    await ppage.waitForTimeout(1100);
    const overflow = await ppage.evaluate(() => document.documentElement.scrollWidth - document.documentElement.clientWidth);
    const phonePng = path.join(opt.out, 'page-phone.png');
    await ppage.screenshot({ path: phonePng, fullPage: true });
    result.screenshots.push(phonePng);
    if (overflow > 1) fail(`on a 390 px wide phone the page scrolls sideways by ${overflow} px`);

    if (problems.length) fail(problems.slice(0, 10).join(' | '));
    result.ok = true;
  } catch (err) {
    result.error = err instanceof CheckError ? err.message : `unexpected: ${err.stack || err}`;
    if (problems.length && !result.error.includes(problems[0])) result.problems = problems.slice(0, 10);
    if (page) {
      const failPng = path.join(opt.out, 'failure.png');
      try {
        await page.screenshot({ path: failPng, fullPage: true, timeout: 5000 });
        result.screenshots.push(failPng);
      } catch {
        // best effort
      }
    }
  } finally {
    if (browser) await browser.close().catch(() => {});
  }
  console.log(JSON.stringify(result));
  if (!result.ok) {
    console.error(`check_page: FAILED: ${result.error}`);
    process.exit(1);
  }
}

main();
