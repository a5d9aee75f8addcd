// careledger dashboard: plain JavaScript, no build step. Served at /assets/app.js.
//
// Reads the named reports of GET /v1/reports/{name} with a bearer token (dashboard or
// analyst), draws them with the bundled ECharts (/assets/echarts.min.js) and gives every
// chart an HTML table with the same numbers (for screen readers, and to drill down by
// keyboard). Suppressed cells (null, listed in `suppressed`) are shown as "—*" and left as
// gaps in charts, never as 0. The page's state is exposed as window.__dashboard for the
// end-to-end check (tests/page/check.mjs).
'use strict';

(() => {
  const FONT = '"Noto Sans CJK SC", "Source Han Sans SC", "Microsoft YaHei", "PingFang SC", "Hiragino Sans GB", sans-serif';
  const TZ = 'Asia/Shanghai';
  const TOKEN_KEY = 'careledger.dashboard.token';
  const LANG_KEY = 'careledger.dashboard.lang';
  const LEVELS = ['province', 'city', 'county', 'township', 'village'];
  const LEVEL_LEN = { province: 2, city: 4, county: 6, township: 9, village: 12 };
  const ROOT = { level: 'province', prefix: '45', code: '450000000000' };
  // Months holding the Spring Festival (春节), marked on the entries and exits charts.
  const SPRING_FESTIVAL = new Set(['2019-02', '2020-01', '2021-02', '2022-02', '2023-01', '2024-02',
    '2025-01', '2026-02', '2027-02', '2028-01', '2029-02', '2030-02']);
  const PALETTE = ['#1d5fa7', '#b4232c', '#2f855a', '#c27c0e', '#6b46c1', '#0e7490', '#9d174d', '#4b5563'];
  const REASON_COLORS = {
    absence_6_months: '#1d5fa7', moved_in: '#2f855a', married: '#c27c0e', transfer_in: '#7c8896',
    age_reached: '#6b46c1',
    spouse_returned: '#b4232c', moved_out: '#c27c0e', divorced: '#6b46c1', spouse_died: '#0e7490',
    died: '#374151', transfer_out: '#7c8896', age_limit: '#9d174d',
  };

  // ---------------------------------------------------------------- words
  const I18N = {
    zh: {
      locale: 'zh-CN',
      appTitle: '农村留守妇女动态台账 · 数据看板',
      appSub: '广西壮族自治区 · 关爱服务数据',
      signinTitle: '登录数据看板',
      signinHelp: '请输入看板（dashboard）令牌或分析员（analyst）令牌。令牌只保存在当前浏览器标签页中，关闭标签页即清除。',
      tokenLabel: '访问令牌',
      signin: '登录',
      signingIn: '正在验证…',
      signout: '退出登录',
      tokenMissing: '请输入令牌。',
      invalidTokenMsg: (d) => `令牌无效（${d}）`,
      forbiddenMsg: (d) => `该令牌无权读取报表（${d}）。数据源令牌只能推送数据，请使用看板或分析员令牌。`,
      networkError: '无法连接服务器',
      sessionExpired: '登录已失效（令牌无效或已过期），请重新登录。',
      period: '统计期',
      fromMonth: '起始月份',
      toMonth: '截止月份',
      asOf: '在册人数统计日',
      refresh: '刷新',
      periodInvalid: '起始月份不能晚于截止月份。',
      periodMissing: '请选择起始月份和截止月份。',
      freshPrefix: '数据截至',
      freshCycle: (n) => `（派生周期 ${n}）`,
      tzName: '北京时间',
      crumbLabel: '地区层级',
      root: '广西',
      levels: { province: '省', city: '市', county: '县（市、区）', township: '乡镇（街道）', village: '村（社区）' },
      levelNote: (name, lvl) => `${name}：按${lvl}显示`,
      panelStock: '在册人数（按地区）',
      panelFlows: '新增与退出（按月份和原因）',
      panelEntries: '新增纳入台账',
      panelExits: '退出台账',
      panelCoverage: '关爱服务覆盖率（按措施）',
      panelSources: '数据源状况',
      csv: '下载 CSV',
      xlsx: '下载 Excel',
      showTable: '数据表',
      drillHint: '点击图中的柱条或表中的地区名称可逐级下钻（市 › 县 › 乡镇 › 村）；点击上方路径返回上级。',
      festivalNote: '浅红色竖条为春节所在月份：春节前后丈夫返乡，退出集中；节后再外出，满半年后新增集中。',
      suppressedLegend: '已抑制（人数过少）',
      noData: '无数据',
      noisyNote: '看板数值含少量一致的随机扰动（保护个人隐私）；人数过少的单元格已抑制，图中留空，不按 0 计。',
      loading: '加载中…',
      downloadFailed: (fmt) => `下载 ${fmt} 失败：`,
      noParams: '请先等报表加载完成。',
      stockSub: (title, asOf) => `${title} · 统计日 ${asOf}`,
      flowsSub: (name, from, to) => `${name} · ${from} 至 ${to}`,
      coverageSub: (title, name, from, to) => `${title} · ${name} · ${from} 至 ${to}`,
      chartAria: (title) => `${title}图表；相同数据见旁边的数据表。`,
      serverError: (s) => `服务器错误（${s}）`,
      labelsFallback: '服务器暂不支持 labels 参数：原因、措施等以代码或中文名称显示。',
      monthFmt: (y, m) => `${y}年${m}月`,
      springFestival: '春节',
    },
    en: {
      locale: 'en',
      appTitle: 'Ledger of rural left-behind women · Dashboard',
      appSub: 'Guangxi Zhuang Autonomous Region · care services',
      signinTitle: 'Sign in to the dashboard',
      signinHelp: 'Enter a dashboard or analyst token. It is kept only in this browser tab and cleared when the tab is closed.',
      tokenLabel: 'Access token',
      signin: 'Sign in',
      signingIn: 'Checking…',
      signout: 'Sign out',
      tokenMissing: 'Please enter a token.',
      invalidTokenMsg: (d) => `Invalid token (${d})`,
      forbiddenMsg: (d) => `This token may not read reports (${d}). Source tokens can only push data; use a dashboard or analyst token.`,
      networkError: 'Cannot reach the server',
      sessionExpired: 'Your session has ended (invalid or expired token); please sign in again.',
      period: 'Period',
      fromMonth: 'From month',
      toMonth: 'To month',
      asOf: 'Stock on',
      refresh: 'Refresh',
      periodInvalid: 'The first month must not be after the last month.',
      periodMissing: 'Please choose the first and the last month.',
      freshPrefix: 'Data as of',
      freshCycle: (n) => ` (derived cycle ${n})`,
      tzName: 'Beijing time',
      crumbLabel: 'Region levels',
      root: 'Guangxi',
      levels: { province: 'province', city: 'city', county: 'county', township: 'township', village: 'village' },
      levelNote: (name, lvl) => `${name}: by ${lvl}`,
      panelStock: 'Women in the ledger by region',
      panelFlows: 'Entries and exits by month and reason',
      panelEntries: 'Entries into the ledger',
      panelExits: 'Exits from the ledger',
      panelCoverage: 'Care service coverage by measure',
      panelSources: 'Source health',
      csv: 'Download CSV',
      xlsx: 'Download Excel',
      showTable: 'Data table',
      drillHint: 'Click a bar or a region name in the table to drill down (city › county › township › village); click the path above to go back up.',
      festivalNote: 'Light red bands mark the month of the Spring Festival: husbands come home around it (exits), leave again after it, and six months later the entries follow.',
      suppressedLegend: 'suppressed (too few)',
      noData: 'no data',
      noisyNote: 'Dashboard figures carry a small consistent noise (privacy protection); cells with too few women are suppressed, left as gaps in charts, never counted as 0.',
      loading: 'Loading…',
      downloadFailed: (fmt) => `Download ${fmt} failed: `,
      noParams: 'Please wait until the report has loaded.',
      stockSub: (title, asOf) => `${title} · on ${asOf}`,
      flowsSub: (name, from, to) => `${name} · ${from} to ${to}`,
      coverageSub: (title, name, from, to) => `${title} · ${name} · ${from} to ${to}`,
      chartAria: (title) => `${title} chart; the same figures are in the table next to it.`,
      serverError: (s) => `Server error (${s})`,
      labelsFallback: 'The server does not take the labels parameter yet: reasons and measures show codes or Chinese names.',
      monthFmt: (y, m) => `${['Jan', 'Feb', 'Mar', 'Apr', 'May', 'Jun', 'Jul', 'Aug', 'Sep', 'Oct', 'Nov', 'Dec'][m - 1]} ${y}`,
      springFestival: 'Spring Festival',
    },
  };

  const COLS = {
    region: ['地区', 'Region'],
    month: ['月份', 'Month'],
    women: ['在册人数', 'Women'],
    age_under_30: ['30岁以下', 'Under 30'],
    age_30_44: ['30–44岁', '30–44'],
    age_45_59: ['45–59岁', '45–59'],
    age_60_plus: ['60岁及以上', '60+'],
    any_priority_group: ['重点群体', 'Priority groups'],
    measure: ['措施领域', 'Measure area'],
    women_in_ledger: ['在册人数', 'Women in ledger'],
    women_served: ['已服务人数', 'Women served'],
    coverage: ['覆盖率', 'Coverage'],
    source: ['数据源', 'Source'],
    last_batch_at: ['最近批次（北京时间）', 'Last batch (Beijing time)'],
    batches: ['批次数', 'Batches'],
    rows_accepted: ['接收行数', 'Rows accepted'],
    rows_rejected: ['拒收行数', 'Rows rejected'],
    seq_gaps: ['序号缺口', 'Sequence gaps'],
    dated_rows: ['带日期行数', 'Dated rows'],
    lag_days_median: ['报送滞后中位数（天）', 'Lag, median (days)'],
    lag_days_p90: ['报送滞后 P90（天）', 'Lag, p90 (days)'],
    share_in_frozen_periods: ['冻结期入库占比', 'Share in frozen periods'],
    orphan_rows: ['孤立行数', 'Orphan rows'],
  };

  // Fallback names of codes (schemas/v1/codes/*.json) for servers without `labels=`.
  const CODES = {
    reason: {
      absence_6_months: ['丈夫连续外出满半年', 'Husband away six months'],
      moved_in: ['长期外出期间迁入农村', 'Moved into a village'],
      married: ['与已长期外出的丈夫结婚', 'Married an absent husband'],
      transfer_in: ['从其他地区转入', 'Transfer in'],
      age_reached: ['达到年龄下限', 'Reached the lower age bound'],
      spouse_returned: ['丈夫返回', 'Husband returned'],
      moved_out: ['迁出农村', 'Moved out'],
      divorced: ['离婚', 'Divorced'],
      spouse_died: ['丈夫死亡', 'Husband died'],
      died: ['本人死亡', 'Died'],
      transfer_out: ['转往其他地区', 'Transfer out'],
      age_limit: ['超过年龄上限', 'Passed the upper age bound'],
    },
    measure: {
      M1: ['解困帮扶', 'Relief and assistance'],
      M2: ['就业扶持', 'Employment support'],
      M3: ['关爱指导', 'Care, guidance and health'],
      M4: ['权益维护', 'Rights protection'],
      M5: ['家教支持', 'Family education support'],
      M6: ['激发内生动力', 'Participation and self-reliance'],
      M7: ['信息台账', 'Information ledger'],
    },
    source: {
      civil_affairs: ['民政部门', 'Civil affairs'],
      womens_federation: ['妇女联合会', "Women's federation"],
      hr_social_security: ['人力资源和社会保障部门', 'Human resources and social security'],
      health: ['卫生健康部门', 'Health commission'],
      disabled_federation: ['残疾人联合会', "Disabled persons' federation"],
      justice: ['司法行政部门', 'Justice administration'],
      public_security: ['公安机关', 'Public security'],
      agriculture: ['农业农村部门', 'Agriculture and rural affairs'],
      culture_tourism: ['文化和旅游部门', 'Culture and tourism'],
      sport: ['体育部门', 'Sport bureau'],
      rural_revitalisation: ['乡村振兴部门', 'Rural revitalisation'],
      women_children_committee: ['妇女儿童工作委员会办公室', "Women and children's work committee"],
    },
  };

  // ---------------------------------------------------------------- state
  const initialLang = (() => {
    try { return localStorage.getItem(LANG_KEY) === 'en' ? 'en' : 'zh'; } catch (_) { return 'zh'; }
  })();
  const state = {
    lang: initialLang,
    signedIn: false,
    catalog: null,          // GET /v1/reports: {name: report}
    labels: null,           // null: not yet known; true: the server takes labels=; false: it does not
    scope: null,            // the token's region scope (a code prefix), when it has one
    path: [Object.assign({}, ROOT)],
    period: null,           // {fromMonth, toMonth, from, to, as_of}
    generation: 0,          // bumped by every load()
    settled: 0,             // the last generation whose panels have all finished
    loading: 0,             // requests in flight
    panels: {},             // what each panel rendered
    params: {},             // the params of each report as last shown (for downloads)
    errors: {},             // panel -> message shown
    reflects: null,         // {cycle, ingested_at}
    disclosure: null,
    downloads: [],          // {report, format, filename, bytes} or {report, format, error}
  };
  window.__dashboard = state;
  const cache = new Map();
  const charts = {};
  const regionNames = { zh: new Map(), en: new Map() };

  const $ = (sel, root) => (root || document).querySelector(sel);
  const $$ = (sel, root) => Array.from((root || document).querySelectorAll(sel));
  const L = () => I18N[state.lang];
  const t = (key, ...args) => {
    const v = L()[key];
    return typeof v === 'function' ? v(...args) : v;
  };
  const li = () => (state.lang === 'zh' ? 0 : 1);
  const col = (name) => (COLS[name] ? COLS[name][li()] : name);

  let token = null;
  try { token = sessionStorage.getItem(TOKEN_KEY); } catch (_) { token = null; }

  // ---------------------------------------------------------------- formatting
  const nf = () => new Intl.NumberFormat(L().locale);
  const fmtInt = (v) => (v == null ? '' : nf().format(v));
  const fmtNum = (v, digits) => (v == null ? '' : new Intl.NumberFormat(L().locale, {
    minimumFractionDigits: digits, maximumFractionDigits: digits }).format(v));
  const fmtPct = (v) => (v == null ? '' : `${fmtNum(v * 100, 1)}%`);
  function parseInstant(s) {
    if (!s) return null;
    // Trim sub-millisecond digits, which Date.parse does not promise to read.
    const d = new Date(String(s).replace(/(\.\d{3})\d+/, '$1'));
    return Number.isNaN(d.getTime()) ? null : d;
  }
  function fmtInstant(s) {
    const d = parseInstant(s);
    if (!d) return s || '';
    const parts = {};
    for (const p of new Intl.DateTimeFormat('en-GB', { timeZone: TZ, year: 'numeric', month: '2-digit', day: '2-digit',
      hour: '2-digit', minute: '2-digit', second: '2-digit', hourCycle: 'h23' }).formatToParts(d)) parts[p.type] = p.value;
    return `${parts.year}-${parts.month}-${parts.day} ${parts.hour}:${parts.minute}:${parts.second}`;
  }
  function fmtAgo(s) {
    const d = parseInstant(s);
    if (!d) return '';
    const secs = Math.round((d.getTime() - Date.now()) / 1000);
    const rtf = new Intl.RelativeTimeFormat(L().locale, { numeric: 'auto' });
    const abs = Math.abs(secs);
    if (abs < 60) return rtf.format(Math.round(secs), 'second');
    if (abs < 3600) return rtf.format(Math.round(secs / 60), 'minute');
    if (abs < 86400) return rtf.format(Math.round(secs / 3600), 'hour');
    return rtf.format(Math.round(secs / 86400), 'day');
  }
  function fmtMonth(iso) {
    const m = /^(\d{4})-(\d{2})/.exec(iso || '');
    return m ? t('monthFmt', m[1], Number(m[2])) : (iso || '');
  }
  const monthOf = (iso) => String(iso).slice(0, 7);

  // ---------------------------------------------------------------- period
  function addMonths(ym, n) {
    const [y, m] = ym.split('-').map(Number);
    const k = y * 12 + (m - 1) + n;
    return `${Math.floor(k / 12)}-${String((k % 12) + 1).padStart(2, '0')}`;
  }
  function lastDay(ym) {
    const [y, m] = ym.split('-').map(Number);
    const d = new Date(Date.UTC(y, m, 0)).getUTCDate();
    return `${ym}-${String(d).padStart(2, '0')}`;
  }
  function periodFrom(fromMonth, toMonth) {
    return { fromMonth, toMonth, from: `${fromMonth}-01`, to: `${addMonths(toMonth, 1)}-01`, as_of: lastDay(toMonth) };
  }
  function defaultPeriod() {
    // The catalog's default `to` follows the data (the day after its last month); show the
    // 18 months before it, which holds two Spring Festival waves.
    let to = '2025-01-01';
    const entries = state.catalog && state.catalog.entries;
    const p = entries && entries.params.find((x) => x.name === 'to');
    if (p && /^\d{4}-\d{2}-01$/.test(p.default)) to = p.default;
    const toMonth = addMonths(to.slice(0, 7), -1);
    return periodFrom(addMonths(toMonth, -17), toMonth);
  }
  // The month pickers: every month from 2015 to this month (and the chosen ones), newest first.
  function fillMonths(keep) {
    const now = new Date();
    let last = `${now.getFullYear()}-${String(now.getMonth() + 1).padStart(2, '0')}`;
    let first = '2015-01';
    for (const m of keep) {
      if (m && m > last) last = m;
      if (m && m < first) first = m;
    }
    for (const id of ['#from-month', '#to-month']) {
      const sel = $(id);
      const value = sel.value;
      sel.replaceChildren();
      for (let m = last; m >= first; m = addMonths(m, -1)) sel.append(el('option', { value: m }, fmtMonth(`${m}-01`)));
      if (value) sel.value = value;
    }
  }
  function setPeriodInputs(p) {
    fillMonths([p.fromMonth, p.toMonth]);
    $('#from-month').value = p.fromMonth;
    $('#to-month').value = p.toMonth;
  }

  function readPeriod() {
    const f = $('#from-month').value;
    const tm = $('#to-month').value;
    if (!/^\d{4}-\d{2}$/.test(f) || !/^\d{4}-\d{2}$/.test(tm)) return { error: t('periodMissing') };
    if (f > tm) return { error: t('periodInvalid') };
    return periodFrom(f, tm);
  }

  // ---------------------------------------------------------------- regions
  const node = () => state.path[state.path.length - 1];
  const childLevel = (lvl) => LEVELS[Math.min(LEVELS.indexOf(lvl) + 1, LEVELS.length - 1)];
  const canDrill = () => LEVELS.indexOf(node().level) < LEVELS.indexOf('township');
  const nodeCode = (n) => n.code || n.prefix.padEnd(12, '0');
  function nodeName(n) {
    if (n.level === 'province') return t('root');
    return regionNames[state.lang].get(nodeCode(n)) || n.name || n.prefix;
  }
  // A region-scoped token starts (and stays) at its scope: the top of its breadcrumb.
  function scopePath(scope) {
    if (!scope || scope === ROOT.prefix) return [Object.assign({}, ROOT)];
    const level = LEVELS.find((l) => LEVEL_LEN[l] === scope.length)
      || LEVELS.find((l) => LEVEL_LEN[l] > scope.length) || 'village';
    return [{ level, prefix: scope, code: scope.padEnd(12, '0') }];
  }
  // A token's scope from GET /v1/tables (analysts and admins), else from a report's refusal.
  async function learnScope() {
    try {
      const res = await fetch('/v1/tables', { headers: authHeaders({ Accept: 'application/json' }), cache: 'no-store' });
      if (res.ok) {
        const body = await res.json();
        return typeof body.scope === 'string' && /^\d+$/.test(body.scope) ? body.scope : null;
      }
    } catch (_) { /* unknown: a report's refusal will tell */ }
    return null;
  }
  function scopeFromProblem(p) {
    if (!(p instanceof Problem) || !/outside-scope$/.test(p.type || '')) return null;
    const m = /region scope (\d+)/.exec(p.detail || '');
    return m && m[1] !== state.scope ? m[1] : null;
  }

  // ---------------------------------------------------------------- answers
  class Problem extends Error {
    constructor(status, detail, type) {
      super(detail);
      this.status = status;
      this.detail = detail;
      this.type = type;
    }
  }
  async function problemOf(res) {
    let detail = '';
    let type = '';
    try {
      const text = await res.text();
      try {
        const j = JSON.parse(text);
        detail = j.detail || j.title || text;
        type = j.type || '';
      } catch (_) { detail = text; }
    } catch (_) { /* no body */ }
    return new Problem(res.status, detail || t('serverError', res.status), type);
  }
  const authHeaders = (extra) => Object.assign({ Authorization: `Bearer ${token}` }, extra || {});
  const mentionsLabels = (p) => p.status === 400 && /\blabels\b/.test(p.detail || '');

  function prep(ans, res) {
    const idx = {};
    ans.columns.forEach((c, i) => { idx[c.name] = i; });
    const sup = new Set((ans.suppressed || []).map(([r, c]) => `${r},${c}`));
    ans.idx = idx;
    ans.isSup = (r, name) => idx[name] !== undefined && sup.has(`${r},${idx[name]}`);
    ans.val = (row, name) => (idx[name] === undefined ? undefined : row[idx[name]]);
    if (!ans.reflects && res) {
      ans.reflects = {
        cycle: res.headers.get('Careledger-Derived-Cycle'),
        ingested_at: res.headers.get('Careledger-Reflects-Ingested-At'),
      };
    }
    return ans;
  }

  // One report as JSON, with labels= when the server takes it (and without when it answers
  // 400 about that parameter: older servers).
  async function report(name, params) {
    const useLabels = state.labels !== false;
    const q = new URLSearchParams(params);
    if (useLabels) q.set('labels', state.lang);
    const url = `/v1/reports/${encodeURIComponent(name)}?${q}`;
    const key = `${token}\n${url}`;
    if (cache.has(key)) return cache.get(key);
    state.loading += 1;
    let res;
    try {
      res = await fetch(url, { headers: authHeaders({ Accept: 'application/json' }), cache: 'no-store' });
    } catch (e) {
      throw new Problem(0, `${t('networkError')}: ${e.message}`);
    } finally {
      state.loading -= 1;
    }
    if (!res.ok) {
      const p = await problemOf(res);
      if (useLabels && mentionsLabels(p)) {
        state.labels = false;
        return report(name, params);
      }
      throw p;
    }
    const ans = prep(await res.json(), res);
    if (useLabels) state.labels = true;
    cache.set(key, ans);
    return ans;
  }

  function label(ans, row, column, kind) {
    const own = ans.val(row, `${column}_label`);
    if (own != null && own !== '') return String(own);
    const code = ans.val(row, column);
    if (kind === 'region') {
      const name = ans.val(row, 'region_name');
      return name != null && name !== '' ? String(name) : String(code);
    }
    if (kind === 'measure' && state.lang === 'zh') {
      const zh = ans.val(row, 'measure_zh');
      if (zh) return String(zh);
    }
    if (kind === 'source' && state.lang === 'zh') {
      const zh = ans.val(row, 'source_zh');
      if (zh) return String(zh);
    }
    const dict = CODES[kind];
    if (dict && dict[code]) return dict[code][li()];
    return code == null ? '' : String(code);
  }

  function noteReflects(ans) {
    const r = ans.reflects;
    if (!r || !r.ingested_at) return;
    const cur = state.reflects;
    const cycle = Number(r.cycle);
    if (!cur || cycle > Number(cur.cycle) || (cycle === Number(cur.cycle) && r.ingested_at > cur.ingested_at)) {
      state.reflects = { cycle: r.cycle, ingested_at: r.ingested_at };
    }
    if (ans.disclosure) state.disclosure = ans.disclosure;
    renderFreshness();
  }

  // ---------------------------------------------------------------- rendering helpers
  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v == null || v === false) continue;
      if (k === 'class') e.className = v;
      else if (k === 'text') e.textContent = v;
      else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
      else e.setAttribute(k, v === true ? '' : v);
    }
    for (const c of children) if (c != null) e.append(c);
    return e;
  }

  // A value cell: suppressed cells are "—*", other nulls "—".
  function valueCell(v, sup, format) {
    if (v == null) {
      if (sup) {
        const td = el('td', { class: 'suppressed', title: t('suppressedLegend'), 'data-suppressed': 'true' }, '—');
        td.append(el('sup', { 'aria-label': t('suppressedLegend') }, '*'));
        return td;
      }
      return el('td', { class: 'null', title: t('noData') }, '—');
    }
    return el('td', {}, format(v));
  }

  function fillTable(table, caption, heads, rows) {
    table.replaceChildren();
    if (caption) table.append(el('caption', { class: 'sr-caption' }, caption));
    const tr = el('tr');
    heads.forEach((h) => tr.append(el('th', { scope: 'col' }, h)));
    table.append(el('thead', {}, tr));
    const tb = el('tbody');
    rows.forEach((r) => tb.append(r));
    if (!rows.length) {
      tb.append(el('tr', {}, el('td', { class: 'text null', colspan: String(heads.length) }, t('noData'))));
    }
    table.append(tb);
  }

  function chart(id) {
    if (!window.echarts) return null;
    const dom = document.getElementById(id);
    let c = charts[id];
    if (!c || c.isDisposed()) {
      c = window.echarts.init(dom, null, { renderer: 'canvas' });
      charts[id] = c;
    }
    return c;
  }
  const baseOption = () => ({
    textStyle: { fontFamily: FONT },
    color: PALETTE,
    animationDuration: 300,
  });
  const emptyGraphic = (empty) => (empty ? [{ type: 'text', left: 'center', top: 'middle',
    style: { text: t('noData'), fill: '#5f6b7a', font: `14px ${FONT}` } }] : []);

  function setPanelError(scope, message) {
    const p = $('.panel-error', scope);
    if (!p) return;
    if (message) { p.textContent = message; p.hidden = false; } else { p.textContent = ''; p.hidden = true; }
  }
  function setLoading(panel, on) {
    panel.classList.toggle('loading', on);
    panel.setAttribute('data-loading', t('loading'));
    panel.setAttribute('aria-busy', on ? 'true' : 'false');
  }

  // ---------------------------------------------------------------- panels
  async function loadStock(gen) {
    const n = node();
    const level = childLevel(n.level);
    const params = { as_of: state.period.as_of, level, region: n.prefix };
    const ans = await report('stock', params);
    if (gen !== state.generation) return;
    noteReflects(ans);
    const len = LEVEL_LEN[level];
    const rows = ans.rows.map((r, i) => {
      const code = String(ans.val(r, 'region_code'));
      const name = label(ans, r, 'region_code', 'region');
      regionNames[state.lang].set(code, name);
      return { i, code, prefix: code.slice(0, len), name, women: ans.val(r, 'women'),
        suppressed: ans.isSup(i, 'women') };
    });
    state.params.stock = params;
    state.panels.stock = { report: 'stock', params, level, rows,
      suppressedCells: (ans.suppressed || []).length };
    renderStock(ans, rows, level);
  }

  function drill(row) {
    if (!canDrill()) return;
    const level = childLevel(node().level);
    state.path.push({ level, prefix: row.prefix, code: row.code, name: row.name });
    load();
  }

  function renderStock(ans, rows, level) {
    const catalogTitle = reportTitle('stock');
    $('#stock-sub').textContent = t('stockSub', catalogTitle, state.period.as_of);
    const drillable = canDrill();
    // Table
    const cols = ['women', 'age_under_30', 'age_30_44', 'age_45_59', 'age_60_plus', 'any_priority_group']
      .filter((c) => ans.idx[c] !== undefined);
    const trs = rows.map((row) => {
      const r = ans.rows[row.i];
      const nameCell = drillable
        ? el('button', { type: 'button', class: 'drill', onclick: (e) => { e.stopPropagation(); drill(row); } }, row.name)
        : document.createTextNode(row.name);
      const tr = el('tr', { 'data-code': row.code, 'data-prefix': row.prefix, class: drillable ? 'drillable' : null },
        el('th', { scope: 'row', title: row.code }, nameCell));
      if (drillable) tr.addEventListener('click', () => drill(row));
      cols.forEach((c) => tr.append(valueCell(ans.val(r, c), ans.isSup(row.i, c), fmtInt)));
      return tr;
    });
    fillTable($('#table-stock'), t('panelStock'), [col('region'), ...cols.map(col)], trs);

    // Chart: one bar per region, gaps for suppressed counts (the axis label gets a "*").
    const dom = $('#chart-stock');
    dom.style.height = `${Math.max(240, Math.min(720, rows.length * 26 + 60))}px`;
    dom.setAttribute('aria-label', t('chartAria', t('panelStock')));
    const c = chart('chart-stock');
    if (!c) return;
    c.resize();
    const names = rows.map((r) => (r.women == null && r.suppressed ? `${r.name} *` : r.name));
    const many = rows.length > 26;
    c.setOption(Object.assign(baseOption(), {
      grid: { left: 8, right: 56, top: 28, bottom: 8, containLabel: true },
      tooltip: {
        trigger: 'axis', axisPointer: { type: 'shadow' },
        formatter: (ps) => {
          const p = ps[0];
          const row = rows[p.dataIndex];
          const v = row.women == null ? (row.suppressed ? `—* ${t('suppressedLegend')}` : '—') : fmtInt(row.women);
          return `${escapeHtml(row.name)} <span style="color:#5f6b7a">${row.prefix}</span><br>${escapeHtml(col('women'))}: <b>${v}</b>`;
        },
      },
      xAxis: { type: 'value', minInterval: 1 },
      yAxis: { type: 'category', inverse: true, data: names, triggerEvent: true,
        axisLabel: { color: '#1f2933', fontSize: 12 } },
      dataZoom: many ? [{ type: 'slider', yAxisIndex: 0, right: 4, width: 14, startValue: 0, endValue: 25 },
        { type: 'inside', yAxisIndex: 0 }] : [],
      graphic: emptyGraphic(!rows.length),
      series: [{
        type: 'bar', name: col('women'), barMaxWidth: 22,
        data: rows.map((r) => (r.women == null ? null : r.women)),
        itemStyle: { color: '#b4232c', borderRadius: [0, 3, 3, 0] },
        label: { show: true, position: 'right', formatter: (p) => fmtInt(p.value), color: '#1f2933' },
        cursor: drillable ? 'pointer' : 'default',
      }],
    }), { notMerge: true });
    c.off('click');
    c.on('click', (p) => {
      let i = -1;
      if (p.componentType === 'series') i = p.dataIndex;
      else if (p.componentType === 'yAxis') i = names.indexOf(p.value);
      if (i >= 0 && rows[i]) drill(rows[i]);
    });
  }

  async function loadFlows(name, gen) {
    const n = node();
    const params = { from: state.period.from, to: state.period.to, level: n.level, region: n.prefix };
    const ans = await report(name, params);
    if (gen !== state.generation) return;
    noteReflects(ans);
    const code = nodeCode(n);
    let idxs = ans.rows.map((_, i) => i).filter((i) => String(ans.val(ans.rows[i], 'region_code')) === code);
    if (!idxs.length) idxs = ans.rows.map((_, i) => i);
    const months = [];
    const monthLabels = {};
    const reasons = [];
    const reasonLabels = {};
    const cells = {};
    for (const i of idxs) {
      const r = ans.rows[i];
      const m = String(ans.val(r, 'month'));
      const reason = String(ans.val(r, 'reason'));
      if (!(m in monthLabels)) { months.push(m); monthLabels[m] = label(ans, r, 'month', 'month'); }
      if (!(reason in reasonLabels)) { reasons.push(reason); reasonLabels[reason] = label(ans, r, 'reason', 'reason'); }
      cells[`${m}|${reason}`] = { v: ans.val(r, name), sup: ans.isSup(i, name) };
      if (i === idxs[0] && n.level !== 'province') {
        regionNames[state.lang].set(code, label(ans, r, 'region_code', 'region'));
      }
    }
    // Every month of the period: analysts get no row for a month (or reason) with nothing to
    // count, which is a 0; dashboards get a complete frame, where a null is suppressed.
    for (let m = state.period.fromMonth; m <= state.period.toMonth; m = addMonths(m, 1)) {
      const day = `${m}-01`;
      if (!(day in monthLabels)) { months.push(day); monthLabels[day] = day; }
    }
    months.sort();
    // Reasons in the order of their code list (analysts' answers hold only those that occur).
    const order = Object.keys(CODES.reason);
    const rank = (rs) => (order.includes(rs) ? order.indexOf(rs) : order.length);
    reasons.sort((x, y) => rank(x) - rank(y));
    for (const m of months) {
      for (const rs of reasons) if (!cells[`${m}|${rs}`]) cells[`${m}|${rs}`] = { v: 0, sup: false };
    }
    // A month label from the server (labels=) or our own.
    const mLabel = (m) => (monthLabels[m] && monthLabels[m] !== m ? monthLabels[m] : fmtMonth(m));
    const series = reasons
      .filter((rs) => months.some((m) => cells[`${m}|${rs}`] && cells[`${m}|${rs}`].v != null))
      .map((rs) => ({ reason: rs, label: reasonLabels[rs],
        data: months.map((m) => (cells[`${m}|${rs}`] ? cells[`${m}|${rs}`].v : null)),
        suppressed: months.map((m) => !!(cells[`${m}|${rs}`] && cells[`${m}|${rs}`].sup)) }));
    state.params[name] = params;
    state.panels[name] = { report: name, params, months, reasons, series,
      suppressedCells: (ans.suppressed || []).length };
    renderFlows(name, months, mLabel, reasons, reasonLabels, cells, series);
  }

  function renderFlows(name, months, mLabel, reasons, reasonLabels, cells, series) {
    const title = t(name === 'entries' ? 'panelEntries' : 'panelExits');
    // Table: months down, reasons across.
    const trs = months.map((m) => {
      const tr = el('tr', { 'data-month': m }, el('th', { scope: 'row' }, mLabel(m)));
      reasons.forEach((rs) => {
        const cell = cells[`${m}|${rs}`] || { v: null, sup: false };
        tr.append(valueCell(cell.v, cell.sup, fmtInt));
      });
      return tr;
    });
    fillTable($(`#table-${name}`), title, [col('month'), ...reasons.map((rs) => reasonLabels[rs])], trs);

    const dom = $(`#chart-${name}`);
    dom.setAttribute('aria-label', t('chartAria', title));
    const c = chart(`chart-${name}`);
    if (!c) return;
    const cats = months.map(mLabel);
    const festival = months.filter((m) => SPRING_FESTIVAL.has(monthOf(m))).map((m) => [{ xAxis: mLabel(m) }, { xAxis: mLabel(m) }]);
    const ser = series.map((s, k) => ({
      type: 'bar', stack: 'total', name: s.label, data: s.data, barMaxWidth: 28,
      itemStyle: { color: REASON_COLORS[s.reason] || PALETTE[k % PALETTE.length] },
      emphasis: { focus: 'series' },
    }));
    if (ser.length && festival.length) {
      ser[0].markArea = { silent: true, itemStyle: { color: 'rgba(180, 35, 44, 0.12)' },
        label: { show: true, position: 'insideTop', color: '#b4232c', fontSize: 11, formatter: t('springFestival') },
        data: festival };
    }
    c.setOption(Object.assign(baseOption(), {
      legend: { type: 'scroll', top: 0, left: 0, right: 0, textStyle: { fontSize: 12 } },
      grid: { left: 8, right: 12, top: 40, bottom: 8, containLabel: true },
      tooltip: {
        trigger: 'axis', axisPointer: { type: 'shadow' },
        formatter: (ps) => {
          if (!ps.length) return '';
          const m = months[ps[0].dataIndex];
          const lines = reasons.map((rs) => {
            const cell = cells[`${m}|${rs}`] || { v: null, sup: false };
            const v = cell.v == null ? (cell.sup ? '—*' : '—') : fmtInt(cell.v);
            return `${escapeHtml(reasonLabels[rs])}: <b>${v}</b>`;
          });
          return `${escapeHtml(mLabel(m))}<br>${lines.join('<br>')}`;
        },
      },
      xAxis: { type: 'category', data: cats, axisLabel: { fontSize: 11, hideOverlap: true } },
      yAxis: { type: 'value', minInterval: 1 },
      graphic: emptyGraphic(!series.length),
      series: ser,
    }), { notMerge: true });
  }

  async function loadCoverage(gen) {
    const n = node();
    const params = { from: state.period.from, to: state.period.to, level: n.level, region: n.prefix, measure: '' };
    const ans = await report('coverage_by_measure', params);
    if (gen !== state.generation) return;
    noteReflects(ans);
    const code = nodeCode(n);
    let idxs = ans.rows.map((_, i) => i).filter((i) => String(ans.val(ans.rows[i], 'region_code')) === code);
    if (!idxs.length) idxs = ans.rows.map((_, i) => i);
    const rows = idxs.map((i) => {
      const r = ans.rows[i];
      return { i, measure: String(ans.val(r, 'measure')), label: label(ans, r, 'measure', 'measure'),
        inLedger: ans.val(r, 'women_in_ledger'), served: ans.val(r, 'women_served'), coverage: ans.val(r, 'coverage'),
        sup: { inLedger: ans.isSup(i, 'women_in_ledger'), served: ans.isSup(i, 'women_served'), coverage: ans.isSup(i, 'coverage') } };
    });
    state.params.coverage_by_measure = params;
    state.panels.coverage = { report: 'coverage_by_measure', params, rows,
      suppressedCells: (ans.suppressed || []).length };
    renderCoverage(rows);
  }

  function renderCoverage(rows) {
    const p = state.period;
    $('#coverage-sub').textContent = t('coverageSub', reportTitle('coverage_by_measure'), nodeName(node()),
      fmtMonth(p.from), fmtMonth(`${p.toMonth}-01`));
    const trs = rows.map((r) => el('tr', { 'data-measure': r.measure },
      el('th', { scope: 'row' }, `${r.measure} ${r.label}`),
      valueCell(r.inLedger, r.sup.inLedger, fmtInt),
      valueCell(r.served, r.sup.served, fmtInt),
      valueCell(r.coverage, r.sup.coverage, fmtPct)));
    fillTable($('#table-coverage'), t('panelCoverage'),
      [col('measure'), col('women_in_ledger'), col('women_served'), col('coverage')], trs);

    const dom = $('#chart-coverage');
    dom.setAttribute('aria-label', t('chartAria', t('panelCoverage')));
    const c = chart('chart-coverage');
    if (!c) return;
    const names = rows.map((r) => `${r.measure} ${r.label}${r.coverage == null && r.sup.coverage ? ' *' : ''}`);
    c.setOption(Object.assign(baseOption(), {
      grid: { left: 8, right: 56, top: 24, bottom: 8, containLabel: true },
      tooltip: {
        trigger: 'axis', axisPointer: { type: 'shadow' },
        formatter: (ps) => {
          const r = rows[ps[0].dataIndex];
          const v = r.coverage == null ? (r.sup.coverage ? `—* ${t('suppressedLegend')}` : '—') : fmtPct(r.coverage);
          return `${escapeHtml(`${r.measure} ${r.label}`)}<br>${escapeHtml(col('coverage'))}: <b>${v}</b><br>`
            + `${escapeHtml(col('women_served'))}: ${r.served == null ? '—' : fmtInt(r.served)} / ${r.inLedger == null ? '—' : fmtInt(r.inLedger)}`;
        },
      },
      xAxis: { type: 'value', max: 100, axisLabel: { formatter: '{value}%' } },
      yAxis: { type: 'category', inverse: true, data: names, axisLabel: { color: '#1f2933', fontSize: 12 } },
      graphic: emptyGraphic(!rows.length),
      series: [{
        type: 'bar', name: col('coverage'), barMaxWidth: 20,
        data: rows.map((r) => (r.coverage == null ? null : Math.round(r.coverage * 1000) / 10)),
        itemStyle: { color: '#1d5fa7', borderRadius: [0, 3, 3, 0] },
        label: { show: true, position: 'right', formatter: (q) => `${fmtNum(q.value, 1)}%`, color: '#1f2933' },
      }],
    }), { notMerge: true });
  }

  async function loadSources(gen) {
    const ans = await report('source_health', {});
    if (gen !== state.generation) return;
    noteReflects(ans);
    state.params.source_health = {};
    const specs = [
      ['last_batch_at', (v) => fmtInstant(v)],
      ['batches', fmtInt], ['rows_accepted', fmtInt], ['rows_rejected', fmtInt], ['seq_gaps', fmtInt],
      ['dated_rows', fmtInt], ['lag_days_median', (v) => fmtNum(v, 1)], ['lag_days_p90', (v) => fmtNum(v, 1)],
      ['share_in_frozen_periods', fmtPct], ['orphan_rows', fmtInt],
    ].filter(([c]) => ans.idx[c] !== undefined);
    const rows = ans.rows.map((r, i) => ({ i, source: String(ans.val(r, 'source')), label: label(ans, r, 'source', 'source') }));
    const trs = rows.map((row) => {
      const r = ans.rows[row.i];
      const tr = el('tr', { 'data-source': row.source }, el('th', { scope: 'row' }, row.label));
      specs.forEach(([c, f]) => tr.append(valueCell(ans.val(r, c), ans.isSup(row.i, c), f)));
      return tr;
    });
    fillTable($('#table-sources'), t('panelSources'), [col('source'), ...specs.map(([c]) => col(c))], trs);
    $('#sources-sub').textContent = reportTitle('source_health');
    state.panels.sources = { report: 'source_health', rows, suppressedCells: (ans.suppressed || []).length };
  }

  function reportTitle(name) {
    const r = state.catalog && state.catalog[name];
    if (!r) return '';
    return state.lang === 'zh' ? (r.title_zh || r.title_en || name) : (r.title_en || r.title_zh || name);
  }

  const PANELS = [
    { id: 'panel-stock', scope: '#panel-stock', run: loadStock },
    { id: 'sub-entries', scope: '#sub-entries', panel: '#panel-flows', run: (g) => loadFlows('entries', g) },
    { id: 'sub-exits', scope: '#sub-exits', panel: '#panel-flows', run: (g) => loadFlows('exits', g) },
    { id: 'panel-coverage', scope: '#panel-coverage', run: loadCoverage },
    { id: 'panel-sources', scope: '#panel-sources', run: loadSources },
  ];

  // Load every panel for the current region and period; answers of an older load are dropped.
  async function load() {
    const gen = ++state.generation;
    renderChrome();
    const period = readPeriod();
    if (period.error) {
      showGlobalError(period.error);
      state.settled = gen;
      return;
    }
    showGlobalError(null);
    state.period = period;
    $('#as-of').textContent = period.as_of;
    $('#flows-sub').textContent = t('flowsSub', nodeName(node()), fmtMonth(period.from), fmtMonth(`${period.toMonth}-01`));
    const runs = PANELS.map(async (p) => {
      const scope = $(p.scope);
      const panel = $(p.panel || p.scope);
      setLoading(panel, true);
      try {
        await p.run(gen);
        if (gen === state.generation) { setPanelError(scope, null); delete state.errors[p.id]; }
      } catch (e) {
        if (gen !== state.generation) return;
        if (e instanceof Problem && e.status === 401) { signOut(t('sessionExpired')); return; }
        const scope = scopeFromProblem(e);
        if (scope) {
          state.scope = scope;
          state.path = scopePath(scope);
          load();
          return;
        }
        const msg = e instanceof Problem ? e.detail : String(e && e.message ? e.message : e);
        state.errors[p.id] = msg;
        setPanelError(scope, msg);
      } finally {
        if (gen === state.generation) setLoading(panel, false);
      }
    });
    await Promise.all(runs);
    if (gen === state.generation) {
      renderChrome();
      state.settled = gen;
    }
  }

  // ---------------------------------------------------------------- chrome
  function renderChrome() {
    // Breadcrumb
    const nav = $('#breadcrumb');
    nav.setAttribute('aria-label', t('crumbLabel'));
    const ol = el('ol');
    state.path.forEach((n, k) => {
      const last = k === state.path.length - 1;
      const name = nodeName(n);
      const item = last
        ? el('span', { 'aria-current': 'page', 'data-level': n.level, 'data-prefix': n.prefix }, name)
        : el('button', { type: 'button', 'data-level': n.level, 'data-prefix': n.prefix,
          onclick: () => { state.path = state.path.slice(0, k + 1); load(); } }, name);
      ol.append(el('li', {}, item));
    });
    nav.replaceChildren(ol);
    const n = node();
    const lvl = childLevel(n.level);
    $('#level-note').textContent = t('levelNote', nodeName(n), t('levels')[lvl]);
    $('#level-note').setAttribute('data-level', lvl);
    // Legend and disclosure note
    const anySup = Object.values(state.panels).some((p) => p && p.suppressedCells > 0);
    $('#legend').hidden = !anySup && !state.disclosure && state.labels !== false;
    $('#suppressed-legend').hidden = !anySup;
    $('#labels-note').hidden = state.labels !== false;
    $('#labels-note').textContent = t('labelsFallback');
    const disc = $('#disclosure');
    if (state.disclosure) {
      disc.hidden = false;
      disc.textContent = t('noisyNote');
      disc.title = state.disclosure;
    } else disc.hidden = true;
    renderFreshness();
  }

  function renderFreshness() {
    const p = $('#freshness');
    const r = state.reflects;
    if (!r) { p.textContent = ''; return; }
    const when = el('span', { class: 'fresh-when' }, `${fmtInstant(r.ingested_at)} ${t('tzName')}`);
    const age = el('span', { class: 'fresh-age' }, fmtAgo(r.ingested_at));
    p.replaceChildren(`${t('freshPrefix')} `, when, t('freshCycle', r.cycle), ' · ', age);
    const d = parseInstant(r.ingested_at);
    p.classList.toggle('stale', !!d && Date.now() - d.getTime() > 86400 * 1000);
    p.setAttribute('data-ingested-at', r.ingested_at);
    p.setAttribute('data-cycle', String(r.cycle));
  }

  function showGlobalError(msg) {
    const g = $('#global-error');
    if (msg) { g.textContent = msg; g.hidden = false; } else { g.textContent = ''; g.hidden = true; }
  }

  function applyI18n() {
    document.documentElement.lang = L().locale;
    document.title = t('appTitle');
    $$('[data-i18n]').forEach((e) => { e.textContent = t(e.getAttribute('data-i18n')); });
    $$('.lang-switch button').forEach((b) => b.setAttribute('aria-pressed', String(b.dataset.lang === state.lang)));
  }

  function setLang(lang) {
    if (lang === state.lang) return;
    state.lang = lang;
    try { localStorage.setItem(LANG_KEY, lang); } catch (_) { /* private mode */ }
    applyI18n();
    fillMonths([]);
    if (state.signedIn) load();
  }

  function escapeHtml(s) {
    return String(s).replace(/[&<>"']/g, (ch) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' }[ch]));
  }

  // ---------------------------------------------------------------- downloads
  function filenameOf(cd) {
    if (!cd) return null;
    let m = /filename\*\s*=\s*([^']*)'[^']*'([^;]+)/i.exec(cd);
    if (m) { try { return decodeURIComponent(m[2].trim().replace(/^"|"$/g, '')); } catch (_) { /* fall through */ } }
    m = /filename\s*=\s*"([^"]+)"/i.exec(cd) || /filename\s*=\s*([^;]+)/i.exec(cd);
    return m ? m[1].trim() : null;
  }

  async function download(name, format, button) {
    const scope = button.closest('.sub') || button.closest('.panel');
    const params = state.params[name];
    const fmtName = format === 'xlsx' ? 'Excel' : 'CSV';
    if (!params) { setPanelError(scope, t('downloadFailed', fmtName) + t('noParams')); return; }
    button.disabled = true;
    try {
      let useLabels = state.labels === true;
      for (;;) {
        const q = new URLSearchParams(params);
        q.set('format', format);
        if (format === 'csv') q.set('bom', 'true');
        if (useLabels) q.set('labels', state.lang);
        let res;
        try {
          res = await fetch(`/v1/reports/${encodeURIComponent(name)}?${q}`, { headers: authHeaders(), cache: 'no-store' });
        } catch (e) {
          throw new Problem(0, `${t('networkError')}: ${e.message}`);
        }
        if (!res.ok) {
          const p = await problemOf(res);
          if (useLabels && mentionsLabels(p)) { useLabels = false; continue; }
          if (p.status === 401) { signOut(t('sessionExpired')); return; }
          throw p;
        }
        const blob = await res.blob();
        const stem = [name, ...Object.entries(params).filter(([, v]) => v !== '').map(([k, v]) => `${k}=${v}`)].join('_');
        const filename = filenameOf(res.headers.get('Content-Disposition')) || `${stem}.${format}`;
        const url = URL.createObjectURL(blob);
        const a = el('a', { href: url, download: filename, hidden: true });
        document.body.append(a);
        a.click();
        a.remove();
        setTimeout(() => URL.revokeObjectURL(url), 30000);
        state.downloads.push({ report: name, format, filename, bytes: blob.size });
        setPanelError(scope, null);
        return;
      }
    } catch (e) {
      const msg = e instanceof Problem ? e.detail : String(e && e.message ? e.message : e);
      state.downloads.push({ report: name, format, error: msg });
      setPanelError(scope, t('downloadFailed', fmtName) + msg);
    } finally {
      button.disabled = false;
    }
  }

  // ---------------------------------------------------------------- sign in / out
  async function checkToken(tok) {
    let res;
    try {
      res = await fetch('/v1/reports', { headers: { Authorization: `Bearer ${tok}`, Accept: 'application/json' }, cache: 'no-store' });
    } catch (e) {
      return { error: `${t('networkError')}: ${e.message}` };
    }
    if (res.ok) {
      const body = await res.json();
      const catalog = {};
      for (const r of body.reports || []) catalog[r.name] = r;
      const scope = typeof body.scope === 'string' && /^\d+$/.test(body.scope) ? body.scope : null;
      return { catalog, scope, role: body.role || null };
    }
    const p = await problemOf(res);
    if (res.status === 401) return { error: t('invalidTokenMsg', p.detail) };
    if (res.status === 403) return { error: t('forbiddenMsg', p.detail) };
    return { error: p.detail };
  }

  function signinError(msg) {
    const e = $('#signin-error');
    if (msg) { e.textContent = msg; e.hidden = false; } else { e.textContent = ''; e.hidden = true; }
  }

  async function signIn(tok, remember) {
    const submit = $('#signin-submit');
    submit.disabled = true;
    submit.textContent = t('signingIn');
    const r = await checkToken(tok);
    submit.disabled = false;
    submit.textContent = t('signin');
    if (r.error) {
      signinError(r.error);
      try { sessionStorage.removeItem(TOKEN_KEY); } catch (_) { /* ignore */ }
      token = null;
      return false;
    }
    token = tok;
    if (remember) { try { sessionStorage.setItem(TOKEN_KEY, tok); } catch (_) { /* ignore */ } }
    state.catalog = r.catalog;
    // The catalog names the caller's scope; older servers did not (then ask /v1/tables).
    state.scope = r.role ? r.scope : await learnScope();
    state.path = scopePath(state.scope);
    state.signedIn = true;
    signinError(null);
    $('#signin').hidden = true;
    $('#dash').hidden = false;
    $('#signout').hidden = false;
    if (!state.period) setPeriodInputs(defaultPeriod());
    load();
    return true;
  }

  function signOut(message) {
    token = null;
    try { sessionStorage.removeItem(TOKEN_KEY); } catch (_) { /* ignore */ }
    state.signedIn = false;
    state.generation += 1;
    state.settled = state.generation;
    state.panels = {};
    state.params = {};
    state.reflects = null;
    state.scope = null;
    state.path = [Object.assign({}, ROOT)];
    cache.clear();
    Object.values(charts).forEach((c) => c.dispose());
    Object.keys(charts).forEach((k) => delete charts[k]);
    $('#dash').hidden = true;
    $('#signout').hidden = true;
    $('#signin').hidden = false;
    $('#token-input').value = '';
    signinError(message || null);
    $('#token-input').focus();
  }

  // ---------------------------------------------------------------- wiring
  function init() {
    applyI18n();
    $$('.lang-switch button').forEach((b) => b.addEventListener('click', () => setLang(b.dataset.lang)));
    $('#signin-form').addEventListener('submit', (e) => {
      e.preventDefault();
      const tok = $('#token-input').value.trim();
      if (!tok) { signinError(t('tokenMissing')); return; }
      signIn(tok, true);
    });
    $('#signout').addEventListener('click', () => signOut(null));
    $('#from-month').addEventListener('change', () => load());
    $('#to-month').addEventListener('change', () => load());
    $('#period-form').addEventListener('submit', (e) => { e.preventDefault(); load(); });
    $('#refresh').addEventListener('click', () => { cache.clear(); state.reflects = null; load(); });
    $$('.panel-actions').forEach((box) => {
      $$('.btn-dl', box).forEach((b) => b.addEventListener('click', () => download(box.dataset.report, b.dataset.format, b)));
    });
    let resizeTimer = null;
    window.addEventListener('resize', () => {
      clearTimeout(resizeTimer);
      resizeTimer = setTimeout(() => Object.values(charts).forEach((c) => c.resize()), 100);
    });
    setInterval(renderFreshness, 30000);
    // A dashboard on a wall stays current: every 5 minutes, when shown and idle, ask again.
    setInterval(() => {
      if (state.signedIn && !document.hidden && state.settled === state.generation && state.loading === 0) {
        cache.clear();
        load();
      }
    }, 5 * 60 * 1000);
    if (!window.echarts) showGlobalError('echarts.min.js did not load: charts are off, the tables hold the figures.');
    if (token) signIn(token, false);
    else $('#token-input').focus();
  }

  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', init);
  else init();
})();
