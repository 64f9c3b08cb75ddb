// Drives the operator dashboard in Chromium, as an operator would. Run by worker/tests/queue.rs:
//   node dashboard.mjs <base-url> <admin-token> <screenshot-dir> <dataset> <broken-dataset> <dead-run-id> <slow-dataset>
// It prints START_WORKER when it needs a worker to take the queued job, and DONE <run-id> at the end.
import { chromium } from "playwright-core";

const [base, token, shots, good, broken, deadRun, slow] = process.argv.slice(2);
const TIMEOUT = 60_000;

function fail(message) {
  console.error(`FAILED: ${message}`);
  process.exit(1);
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-dev-shm-usage"],
});
try {
  const page = await browser.newPage({ viewport: { width: 1440, height: 1100 } });
  page.on("pageerror", (e) => fail(`page error: ${e.message}`));
  page.setDefaultTimeout(TIMEOUT);
  await page.goto(`${base}/dashboard#token=${token}`);
  await page.locator("#who", { hasText: "(admin)" }).waitFor();

  // The dataset is listed; "Run now" queues a run, which waits: no worker is running yet.
  await page.locator(`#datasets tr[data-dataset="${good}"]`).waitFor();
  await page.click(`button[data-trigger="${good}"]`);
  const queued = page.locator(`#runs tr[data-dataset="${good}"][data-state="queued"]`).first();
  await queued.waitFor();
  const runId = await queued.getAttribute("data-run-id");
  await page.locator("#q-queued", { hasText: /^[1-9]/ }).waitFor();
  await page.locator("#q-latency", { hasText: /s|min/ }).waitFor();
  await page.locator("#queue-view").screenshot({ path: `${shots}/dashboard-queue.png` });

  // A worker starts; the same row moves to succeeded, with rows and a manifest link.
  console.log("START_WORKER");
  const done = page.locator(`#runs tr[data-run-id="${runId}"][data-state="succeeded"]`);
  await done.waitFor();
  const rows = await done.locator("td.num").first().textContent();
  if (rows.trim() !== "3") fail(`expected 3 rows, the dashboard shows ${rows}`);
  await done.locator('a[data-doc="manifest"]').click();
  await page.locator("#doc-body", { hasText: '"sequence"' }).waitFor();
  await page.click("#doc-close");
  await page.locator("#workers tr[data-worker] .dot:not(.gone)").first().waitFor();

  // The run's webhook shows in the delivery log once the worker's relay delivered it.
  const delivery = page.locator(`#deliveries tr[data-state="delivered"]`).first();
  await delivery.waitFor();
  if (!(await delivery.textContent()).includes("run_succeeded")) fail("the delivery's event is not shown");
  await page.locator("#webhooks-view").screenshot({ path: `${shots}/dashboard-webhooks.png` });
  await page.locator("#runs-view").screenshot({ path: `${shots}/dashboard-runs.png` });
  await page.locator("#workers-view").screenshot({ path: `${shots}/dashboard-workers.png` });

  // A slow run shows its progress while it reads: rows so far and rows/s, growing.
  await page.click(`button[data-trigger="${slow}"]`);
  const reading = page.locator(`#runs tr[data-dataset="${slow}"][data-state="running"] [data-progress-rows]`).first();
  await reading.waitFor();
  const firstRows = Number(await reading.getAttribute("data-progress-rows"));
  const text = await reading.textContent();
  if (!/so far · [\d,.]+ rows\/s/.test(text)) fail(`progress shows "${text}"`);
  await page.waitForFunction(
    ([dataset, rows]) => {
      const cell = document.querySelector(`#runs tr[data-dataset="${dataset}"][data-state="running"] [data-progress-rows]`);
      return cell && Number(cell.getAttribute("data-progress-rows")) > rows;
    },
    [slow, Math.max(firstRows, 50)],
  );
  await page.locator("#runs-view").screenshot({ path: `${shots}/dashboard-progress.png` });
  await page.locator(`#runs tr[data-dataset="${slow}"][data-state="succeeded"]`).first().waitFor();

  // The dead job is listed with its error; "Retry now" runs it again, and it succeeds (its
  // source was fixed meanwhile).
  const dead = page.locator(`#attention tr[data-run-id="${deadRun}"][data-state="dead"]`);
  await dead.waitFor();
  const error = await dead.locator("td.error").textContent();
  if (!error.includes("missing.csv")) fail(`the dead job's error is not shown: ${error}`);
  await page.locator("#attention-view").screenshot({ path: `${shots}/dashboard-dead.png` });
  await dead.locator('button[data-action="retry"]').click();
  await page.locator(`#attention tr[data-run-id="${deadRun}"]`).waitFor({ state: "detached" });
  await page.locator(`#runs tr[data-dataset="${broken}"][data-state="succeeded"]`).waitFor();

  // Filters: by state and by dataset.
  await page.selectOption("#f-state", "succeeded");
  await page.fill("#f-dataset", broken);
  await page.locator(`#runs tr[data-dataset="${good}"]`).waitFor({ state: "detached" });
  await page.selectOption("#f-state", "");
  await page.fill("#f-dataset", "");
  await page.locator(`#datasets-view`).screenshot({ path: `${shots}/dashboard-datasets.png` });

  // A 12 MiB CSV through the upload form: resumable chunks, a progress bar that moves, and the
  // seed's validation status at the end.
  const lines = ["id,name,amount"];
  for (let i = 0; lines.length < 400_000; i++) lines.push(`${i},cliente-${i % 9973},${i % 1000}.25`);
  const csv = Buffer.from(lines.join("\n") + "\n");
  await page.fill("#up-dataset", `subida_${Date.now()}`);
  await page.setInputFiles("#up-file", { name: "subida.csv", mimeType: "text/csv", buffer: csv });
  await page.click("#up-start");
  await page.locator('#up-status[data-status]').waitFor();
  const upStatus = await page.locator("#up-status").textContent();
  if (!upStatus.startsWith("initial-validation-passed")) fail(`upload: ${upStatus}`);
  if (!upStatus.includes(`${lines.length - 1} rows`)) fail(`upload row count: ${upStatus}`);
  const updates = Number(await page.locator("#up-progress").getAttribute("data-updates"));
  if (updates < 3) fail(`the progress bar moved ${updates} times`);
  if (Number(await page.locator("#up-progress").getAttribute("value")) !== 100) fail("progress did not reach 100");
  await page.locator("#upload-view").screenshot({ path: `${shots}/dashboard-upload.png` });
  await page.screenshot({ path: `${shots}/dashboard.png`, fullPage: true });
  console.log(`DONE ${runId}`);
} catch (e) {
  fail(e.stack || String(e));
} finally {
  await browser.close();
}
