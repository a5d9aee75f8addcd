// The dashboard page end to end, in headless Debian Chromium driven by playwright-core.
// Run by scripts/page-check, which starts a server on a simulated history and passes:
//   PAGE_URL       the page's base URL (the server's own, or a dev proxy)
//   PAGE_TOKEN     a dashboard token of that server
//   PAGE_SCOPED_TOKEN, PAGE_SCOPE  optional: a dashboard token scoped to the region PAGE_SCOPE
//   PAGE_OUT       where the screenshots go (dashboard.png, dashboard-township.png)
//   PAGE_NODE_DIR  the folder whose node_modules holds playwright-core
//   PAGE_CHROMIUM  the browser (default /usr/bin/chromium)
// Each step prints "ok <step>" or "not ok <step>: <why>"; the last line is "N passed, N failed".
import { createRequire } from 'node:module';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

const env = (name, fallback) => {
  const v = process.env[name] || fallback;
  if (!v) {
    console.error(`page check: ${name} is not set`);
    process.exit(2);
  }
  return v;
};
const PAGE_URL = env('PAGE_URL');
const TOKEN = env('PAGE_TOKEN');
const SCOPED_TOKEN = process.env.PAGE_SCOPED_TOKEN || '';
const SCOPE = process.env.PAGE_SCOPE || '';
const OUT = env('PAGE_OUT');
const NODE_DIR = env('PAGE_NODE_DIR', path.join(os.homedir(), '.cache/careledger/page-node'));
const CHROMIUM = env('PAGE_CHROMIUM', '/usr/bin/chromium');
const require = createRequire(path.join(NODE_DIR, 'package.json'));
const { chromium } = require('playwright-core');

const STEP_TIMEOUT = 20_000;
const LEVEL_LEN = { province: 2, city: 4, county: 6, township: 9, village: 12 };
const CJK = /[\u3400-\u9fff]/;

class CheckError extends Error {}
function check(cond, message) {
  if (!cond) throw new CheckError(message);
}

let passed = 0;
let failed = 0;
const started = Date.now();
// The whole check is bounded: a hung browser or server must not hang CI.
const deadline = setTimeout(() => {
  console.log('not ok page check: took longer than 120 s');
  console.log(`${passed} passed, ${failed + 1} failed`);
  process.exit(1);
}, 120_000);

fs.mkdirSync(OUT, { recursive: true });
const userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'careledger-page-'));
const context = await chromium.launchPersistentContext(userDataDir, {
  executablePath: CHROMIUM,
  headless: true,
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync', '--lang=zh-CN'],
  viewport: { width: 1280, height: 800 },
  locale: 'zh-CN',
  timezoneId: 'Asia/Shanghai',
  acceptDownloads: true,
});
context.setDefaultTimeout(STEP_TIMEOUT);
const page = context.pages()[0] || await context.newPage();
const pageErrors = [];
page.on('pageerror', (e) => pageErrors.push(e.message));
// The server sends a Content-Security-Policy (scripts and connections to its own origin only):
// anything the page does that the policy refuses is an error too.
page.on('console', (m) => {
  if (m.type() === 'error' && /Content Security Policy|Refused to/i.test(m.text())) pageErrors.push(m.text());
});

async function step(name, fn) {
  const t0 = Date.now();
  try {
    const note = await fn();
    passed += 1;
    console.log(`ok ${name} (${Date.now() - t0} ms)${note ? ` — ${note}` : ''}`);
  } catch (e) {
    failed += 1;
    console.log(`not ok ${name}: ${e instanceof CheckError ? e.message : e.stack || e}`);
    try { await page.screenshot({ path: path.join(OUT, 'failure.png'), fullPage: true }); } catch (_) { /* closed */ }
    throw e;
  }
}

const dash = () => page.evaluate(() => {
  const d = window.__dashboard;
  return JSON.parse(JSON.stringify({
    lang: d.lang, signedIn: d.signedIn, labels: d.labels, generation: d.generation, settled: d.settled,
    loading: d.loading, panels: d.panels, errors: d.errors, period: d.period, reflects: d.reflects,
    path: d.path, downloads: d.downloads,
  }));
});
const generation = () => page.evaluate(() => window.__dashboard.generation);
// Waits until a load started after generation `after` has finished and the charts have drawn.
async function settled(after) {
  try {
    await page.waitForFunction((g) => {
      const d = window.__dashboard;
      return d.generation > g && d.settled === d.generation && d.loading === 0;
    }, after, { timeout: STEP_TIMEOUT });
  } catch (e) {
    const seen = await page.evaluate(() => ({
      signin: document.getElementById('signin-error').hidden ? '' : document.getElementById('signin-error').innerText,
      global: document.getElementById('global-error').hidden ? '' : document.getElementById('global-error').innerText,
      errors: window.__dashboard.errors,
    })).catch(() => ({}));
    throw new CheckError(`the page did not finish loading within ${STEP_TIMEOUT / 1000} s; it shows ${JSON.stringify(seen)}`);
  }
  await page.evaluate(() => new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r))));
  return dash();
}
// What a chart drew: its category labels and each series' data, read from ECharts itself.
const chartData = (id) => page.evaluate((dom) => {
  const c = window.echarts && window.echarts.getInstanceByDom(document.getElementById(dom));
  if (!c) return null;
  const o = c.getOption();
  const cat = (o.xAxis || []).concat(o.yAxis || []).find((a) => a.type === 'category');
  return { categories: cat ? cat.data : [], series: o.series.map((s) => ({ name: s.name, data: s.data })) };
}, id);
const text = (sel) => page.locator(sel).innerText();
const crumbs = () => page.locator('#breadcrumb li').allInnerTexts();

function checkCodes(d, level, parent) {
  const rows = d.panels.stock.rows;
  check(d.panels.stock.level === level, `stock level is ${d.panels.stock.level}, want ${level}`);
  check(rows.length > 0, `no ${level} rows in the stock answer`);
  const len = LEVEL_LEN[level];
  for (const r of rows) {
    check(/^\d{12}$/.test(r.code), `region code ${r.code} is not 12 digits`);
    check(r.prefix.length === len && /^0*$/.test(r.code.slice(len)),
      `region code ${r.code} is not a ${level} code (${len} significant digits), prefix ${r.prefix}`);
    check(r.code.startsWith(parent), `region code ${r.code} is outside ${parent}`);
  }
  return rows;
}
async function checkTableMatches(d) {
  const prefixes = await page.locator('#table-stock tbody tr[data-prefix]').evaluateAll(
    (trs) => trs.map((tr) => tr.getAttribute('data-prefix')));
  check(prefixes.length === d.panels.stock.rows.length,
    `the stock table has ${prefixes.length} rows, the answer ${d.panels.stock.rows.length}`);
  check(prefixes.every((p, i) => p === d.panels.stock.rows[i].prefix), 'the stock table rows differ from the answer');
}
const biggest = (rows) => rows.filter((r) => r.women != null).sort((a, b) => b.women - a.women)[0];
async function drillInto(row) {
  const g = await generation();
  await page.locator(`#table-stock tbody tr[data-code="${row.code}"] button.drill`).click();
  return settled(g);
}

let exitCode = 0;
try {
  await step('the sign-in form comes first', async () => {
    await page.goto(PAGE_URL, { waitUntil: 'load' });
    await page.locator('#signin-form').waitFor({ state: 'visible' });
    check(await page.locator('#dash').isHidden(), 'the dashboard is shown before signing in');
    check(await page.locator('#token-input').isVisible(), 'no token field');
    check(await page.evaluate(() => document.documentElement.lang) === 'zh-CN', 'the page is not zh-CN by default');
    const h1 = await text('h1');
    check(CJK.test(h1), `the title is not Chinese: ${h1}`);
    check(await page.evaluate(() => typeof window.echarts === 'object'), 'echarts.min.js did not load');
  });

  await step('a wrong token gives a visible error', async () => {
    await page.fill('#token-input', 'cl_000000000000000000000000000000000000000000000000');
    await page.click('#signin-submit');
    await page.locator('#signin-error').waitFor({ state: 'visible' });
    const msg = await text('#signin-error');
    check(msg.includes('令牌无效'), `the error says "${msg}", want 令牌无效`);
    check(await page.locator('#dash').isHidden(), 'the dashboard opened with a wrong token');
  });

  let d;
  await step('the dashboard token signs in and shows the stock chart', async () => {
    const g = await generation();
    await page.fill('#token-input', TOKEN);
    await page.click('#signin-submit');
    d = await settled(g);
    check(await page.locator('#dash').isVisible(), 'the dashboard is not shown');
    check(await page.locator('#signin').isHidden(), 'the sign-in form is still shown');
    check(d.signedIn, 'not signed in');
    check(Object.keys(d.errors).length === 0, `panels show errors: ${JSON.stringify(d.errors)}`);
    const kept = await page.evaluate(() => sessionStorage.getItem('careledger.dashboard.token'));
    check(kept === TOKEN, 'the token is not kept in sessionStorage');
    check(await page.locator('#chart-stock canvas').count() > 0, 'the stock chart has no canvas');
    const drawn = await chartData('chart-stock');
    check(drawn && drawn.series.length === 1, 'the stock chart has no series');
    check(drawn.series[0].data.length === d.panels.stock.rows.length, 'the stock chart does not show every region');
    for (const [i, r] of d.panels.stock.rows.entries()) {
      check(drawn.series[0].data[i] === r.women, `stock chart bar ${i} is ${drawn.series[0].data[i]}, the answer ${r.women}`);
    }
    return `labels=${d.labels ? 'yes' : 'no (server without labels=, codes and region_name shown)'}`;
  });

  await step('province level: cities (4-digit codes)', async () => {
    check(JSON.stringify(await crumbs()) === JSON.stringify(['广西']), `breadcrumb ${JSON.stringify(await crumbs())}`);
    check(await page.locator('#level-note').getAttribute('data-level') === 'city', 'the level shown is not city');
    checkCodes(d, 'city', '45');
    await checkTableMatches(d);
    check(d.panels.entries.params.level === 'province' && d.panels.entries.params.region === '45',
      `entries asked for ${JSON.stringify(d.panels.entries.params)}`);
  });

  await step('the knowledge instant and its freshness are shown', async () => {
    const f = await text('#freshness');
    check(f.includes('数据截至') && f.includes('派生周期'), `freshness line: "${f}"`);
    check(/\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}/.test(f), `no instant in "${f}"`);
    check(/前|刚刚|现在|秒/.test(f), `no age in "${f}"`);
    check(d.reflects && d.reflects.ingested_at && String(d.reflects.cycle) !== '', 'no reflects kept');
    check(f.includes(`派生周期 ${d.reflects.cycle}`), `the cycle ${d.reflects.cycle} is not in "${f}"`);
    return f;
  });

  await step('suppressed cells are marked, and are gaps (not 0) in charts', async () => {
    const total = Object.values(d.panels).reduce((n, p) => n + (p.suppressedCells || 0), 0);
    if (total === 0) return 'no suppressed cells in these answers (analyst token?)';
    const marked = page.locator('td.suppressed');
    check(await marked.count() > 0, 'the answers list suppressed cells but no table cell is marked');
    const sample = await marked.first().innerText();
    check(sample.replace(/\s/g, '') === '—*', `a suppressed cell reads "${sample}"`);
    check(await page.locator('#suppressed-legend').isVisible(), 'the legend is not shown');
    check((await text('#suppressed-legend')).includes('已抑制（人数过少）'), 'the legend does not explain suppression');
    const drawn = await chartData('chart-stock');
    const sup = d.panels.stock.rows.map((r, i) => [r, i]).filter(([r]) => r.suppressed);
    for (const [, i] of sup) check(drawn.series[0].data[i] == null, `suppressed region ${i} drawn as ${drawn.series[0].data[i]}`);
    return `${total} suppressed cells, ${await marked.count()} marked in tables`;
  });

  await step('the Spring Festival wave shows in the default period', async () => {
    const months = d.panels.exits.months;
    check(months.length >= 12, `the default period has ${months.length} months`);
    check(months[0] === d.period.from, `the first month ${months[0]} is not the period's ${d.period.from}`);
    const totals = months.map((m, k) => [m, d.panels.exits.series.reduce((s, x) => s + (x.data[k] || 0), 0)]);
    const [peak] = totals.slice().sort((a, b) => b[1] - a[1])[0];
    check(['12', '01', '02'].includes(peak.slice(5, 7)), `exits peak in ${peak}, not around the Spring Festival`);
    await page.waitForTimeout(400); // the bars' entry animation
    await page.screenshot({ path: path.join(OUT, 'dashboard.png'), fullPage: true });
    return `exits peak in ${peak}`;
  });

  let city;
  await step('drill by clicking: province → city (county rows, 6-digit codes)', async () => {
    city = biggest(d.panels.stock.rows);
    check(city, 'no city with an unsuppressed count to drill into');
    d = await drillInto(city);
    const c = await crumbs();
    check(c.length === 2 && c[0] === '广西' && c[1] === city.name, `breadcrumb ${JSON.stringify(c)}`);
    check(await page.locator('#level-note').getAttribute('data-level') === 'county', 'the level shown is not county');
    checkCodes(d, 'county', city.prefix);
    await checkTableMatches(d);
    check(d.panels.entries.params.level === 'city' && d.panels.entries.params.region === city.prefix,
      `entries asked for ${JSON.stringify(d.panels.entries.params)}`);
    check(d.panels.coverage.params.region === city.prefix, 'coverage did not follow the drill-down');
    return city.name;
  });

  let county;
  await step('drill by clicking: city → county (township rows, 9-digit codes)', async () => {
    county = biggest(d.panels.stock.rows);
    check(county, 'no county with an unsuppressed count to drill into');
    d = await drillInto(county);
    const c = await crumbs();
    check(c.length === 3 && c[2] === county.name, `breadcrumb ${JSON.stringify(c)}`);
    check(await page.locator('#level-note').getAttribute('data-level') === 'township', 'the level shown is not township');
    const rows = checkCodes(d, 'township', county.prefix);
    await checkTableMatches(d);
    const shown = rows.filter((r) => r.women != null).length;
    check(shown > 0, `every township of ${county.name} is suppressed: simulate more women`);
    await page.waitForTimeout(400);
    await page.screenshot({ path: path.join(OUT, 'dashboard-township.png'), fullPage: true });
    return `${county.name}: ${shown} of ${rows.length} townships with a count`;
  });

  await step('drill by clicking: county → township (village rows, 12-digit codes)', async () => {
    const town = biggest(d.panels.stock.rows);
    d = await drillInto(town);
    const c = await crumbs();
    check(c.length === 4 && c[3] === town.name, `breadcrumb ${JSON.stringify(c)}`);
    checkCodes(d, 'village', town.prefix);
    check(await page.locator('#table-stock button.drill').count() === 0, 'villages are offered for a further drill-down');
    return town.name;
  });

  await step('the breadcrumb goes back up to the province', async () => {
    const g = await generation();
    await page.locator('#breadcrumb li').first().locator('button').click();
    d = await settled(g);
    check(JSON.stringify(await crumbs()) === JSON.stringify(['广西']), `breadcrumb ${JSON.stringify(await crumbs())}`);
    checkCodes(d, 'city', '45');
  });

  await step('clicking a bar of the stock chart drills down too', async () => {
    const rows = d.panels.stock.rows;
    const target = biggest(rows);
    const i = rows.findIndex((r) => r.code === target.code);
    await page.locator('#chart-stock').scrollIntoViewIfNeeded();
    // Bars grow in an animation after each render: a click before it ends can miss the bar.
    await page.evaluate(() => new Promise((done) => {
      const c = window.echarts.getInstanceByDom(document.getElementById('chart-stock'));
      const timer = setTimeout(done, 3000);
      c.on('finished', () => { clearTimeout(timer); done(); });
    }));
    const at = await page.evaluate(([k, v]) => window.echarts.getInstanceByDom(document.getElementById('chart-stock'))
      .convertToPixel({ seriesIndex: 0 }, [v / 2, k]), [i, target.women]);
    const box = await page.locator('#chart-stock').boundingBox();
    let g = await generation();
    await page.mouse.click(box.x + at[0], box.y + at[1]);
    d = await settled(g);
    const c = await crumbs();
    check(c.length === 2 && c[1] === target.name, `after clicking the bar of ${target.name}: breadcrumb ${JSON.stringify(c)}`);
    checkCodes(d, 'county', target.prefix);
    g = await generation();
    await page.locator('#breadcrumb li').first().locator('button').click();
    d = await settled(g);
    checkCodes(d, 'city', '45');
    return target.name;
  });

  await step('changing the period changes the entries chart', async () => {
    const before = await chartData('chart-entries');
    check(before && before.series.length > 0, 'the entries chart has no series');
    let g = await generation();
    await page.selectOption('#from-month', '2024-01');
    await settled(g);
    g = await generation();
    await page.selectOption('#to-month', '2024-06');
    d = await settled(g);
    const after = await chartData('chart-entries');
    check(d.panels.entries.params.from === '2024-01-01' && d.panels.entries.params.to === '2024-07-01',
      `entries asked for ${JSON.stringify(d.panels.entries.params)}`);
    check(d.panels.stock.params.as_of === '2024-06-30', `stock asked for as_of ${d.panels.stock.params.as_of}`);
    check((await text('#as-of')) === '2024-06-30', 'the stock day shown is not 2024-06-30');
    check(after.categories.length === 6, `the entries chart shows ${after.categories.length} months, want 6`);
    check(JSON.stringify(after) !== JSON.stringify(before), 'the entries chart did not change');
    const cat = before.categories.length;
    return `${cat} → ${after.categories.length} months`;
  });

  await step('a period that ends before it starts is refused', async () => {
    const g = await generation();
    await page.selectOption('#from-month', '2024-08');
    await page.waitForFunction((x) => window.__dashboard.settled > x, g);
    check(await page.locator('#global-error').isVisible(), 'no error for from > to');
    check((await text('#global-error')).includes('起始月份不能晚于截止月份'), 'the error does not say why');
    const g2 = await generation();
    await page.selectOption('#from-month', '2024-01');
    d = await settled(g2);
    check(await page.locator('#global-error').isHidden(), 'the error stays after fixing the period');
  });

  await step('switching to English re-renders the labels', async () => {
    const zhStock = await text('#stock-title');
    const g = await generation();
    await page.click('#lang-en');
    d = await settled(g);
    check(await page.evaluate(() => document.documentElement.lang) === 'en', 'html lang is not en');
    const h1 = await text('h1');
    const stockTitle = await text('#stock-title');
    check(!CJK.test(h1) && h1.includes('Dashboard'), `the title is "${h1}"`);
    check(stockTitle !== zhStock && !CJK.test(stockTitle), `the stock title is "${stockTitle}"`);
    for (const sel of ['#flows-title', '#coverage-title', '#sources-title', '#entries-title', '#exits-title']) {
      check(!CJK.test(await text(sel)), `${sel} is still Chinese`);
    }
    const f = await text('#freshness');
    check(f.includes('Data as of') && f.includes('derived cycle'), `freshness line: "${f}"`);
    check((await crumbs())[0] === 'Guangxi', `breadcrumb ${JSON.stringify(await crumbs())}`);
    const heads = await page.locator('#table-stock thead th').allInnerTexts();
    check(heads.includes('Women'), `stock table headers ${JSON.stringify(heads)}`);
    const months = (await chartData('chart-entries')).categories;
    check(months.every((m) => !CJK.test(m)), `entries months ${JSON.stringify(months)}`);
    if (await page.locator('td.suppressed').count() > 0) {
      check((await text('#suppressed-legend')).includes('suppressed (too few)'), 'the legend is not English');
    }
    await page.click('#lang-zh');
    await settled(await generation() - 1);
    return stockTitle;
  });

  await step('下载 CSV saves the report as a file', async () => {
    const [dl] = await Promise.all([
      page.waitForEvent('download'),
      page.click('#panel-stock .btn-dl[data-format="csv"]'),
    ]);
    const name = dl.suggestedFilename();
    check(name.endsWith('.csv'), `the file is named ${name}`);
    const bytes = fs.readFileSync(await dl.path());
    check(bytes[0] === 0xef && bytes[1] === 0xbb && bytes[2] === 0xbf, 'the CSV has no UTF-8 byte order mark');
    check(bytes.toString('utf8').includes('region_code'), 'the CSV has no region_code column');
    return `${name}, ${bytes.length} bytes`;
  });

  await step('下载 Excel saves an .xlsx, or shows the server\'s error', async () => {
    const err = page.locator('#panel-stock .panel-error');
    const download = page.waitForEvent('download').then((x) => ({ dl: x }), () => null);
    const shown = err.waitFor({ state: 'visible' }).then(() => ({ err: true }), () => null);
    await page.click('#panel-stock .btn-dl[data-format="xlsx"]');
    const got = await Promise.race([download, shown]);
    check(got, 'neither a download nor an error after 下载 Excel');
    if (got.dl) {
      const name = got.dl.suggestedFilename();
      check(name.endsWith('.xlsx'), `the file is named ${name}`);
      const bytes = fs.readFileSync(await got.dl.path());
      check(bytes[0] === 0x50 && bytes[1] === 0x4b, 'the .xlsx is not a zip file');
      return `${name}, ${bytes.length} bytes`;
    }
    const msg = await err.innerText();
    check(msg.includes('Excel') && msg.length > 'Excel'.length + 8, `the error reads "${msg}"`);
    return `server has no xlsx yet: "${msg}"`;
  });

  await step('signing out returns to the sign-in form', async () => {
    await page.click('#signout');
    await page.locator('#signin-form').waitFor({ state: 'visible' });
    check(await page.locator('#dash').isHidden(), 'the dashboard stays after signing out');
    check(await page.evaluate(() => sessionStorage.getItem('careledger.dashboard.token')) === null,
      'the token stays in sessionStorage');
  });

  if (SCOPED_TOKEN) {
    await step(`a token scoped to ${SCOPE} starts at its region`, async () => {
      const g = await generation();
      await page.fill('#token-input', SCOPED_TOKEN);
      await page.click('#signin-submit');
      d = await settled(g);
      check(Object.keys(d.errors).length === 0, `panels show errors: ${JSON.stringify(d.errors)}`);
      const c = await crumbs();
      check(c.length === 1 && c[0] !== '广西', `breadcrumb ${JSON.stringify(c)}`);
      const level = Object.keys(LEVEL_LEN).find((l) => LEVEL_LEN[l] === SCOPE.length);
      const child = Object.keys(LEVEL_LEN)[Object.keys(LEVEL_LEN).indexOf(level) + 1];
      checkCodes(d, child, SCOPE);
      check(d.panels.entries.params.region === SCOPE && d.panels.entries.params.level === level,
        `entries asked for ${JSON.stringify(d.panels.entries.params)}`);
      await page.click('#signout');
      await page.locator('#signin-form').waitFor({ state: 'visible' });
      return `${c[0]}, ${d.panels.stock.rows.length} ${child} rows`;
    });
  }

  await step('no script errors or refused loads on the page', async () => {
    check(pageErrors.length === 0, `page errors: ${pageErrors.join(' | ')}`);
  });
} catch (e) {
  exitCode = 1;
  if (pageErrors.length) console.log(`page errors: ${pageErrors.join(' | ')}`);
} finally {
  await context.close().catch(() => {});
  fs.rmSync(userDataDir, { recursive: true, force: true });
  clearTimeout(deadline);
}
console.log(`page check: ${((Date.now() - started) / 1000).toFixed(1)} s, screenshots in ${OUT}`);
console.log(`${passed} passed, ${failed} failed`);
process.exit(exitCode || (failed ? 1 : 0));
