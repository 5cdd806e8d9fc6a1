// edgetl's phone page: MediaPipe Tasks' ImageClassifier on this device's CPU, and
// the answer edgetl's runner gives (answer.js).

import { cardRule, decide as decideWith } from "./answer.js";

const $ = (id) => document.getElementById(id);
const fail = (what, error) => {
  $("status").textContent = `${what}: ${error?.message || error}`;
  $("status").style.color = "#a00";
};
window.addEventListener("unhandledrejection", (event) => fail("error", event.reason));
window.addEventListener("error", (event) => fail("error", event.message));
const blocked = [];  // requests the Content-Security-Policy stopped (MediaPipe's metrics)
document.addEventListener("securitypolicyviolation", (event) => {
  blocked.push(event.blockedURI);
});

const config = await (await fetch("config.json")).json();
const labels = config.labels;
const { unknownIndex, floor } = cardRule(config.card, labels.length);
$("title").textContent = `${config.model} · ${labels.filter((_, i) => i !== unknownIndex).length} classes`;

let vision;
try {
  vision = await import(`${config.runtime_url}/vision_bundle.mjs`);
} catch (error) {
  fail(`MediaPipe's runtime did not load from ${config.runtime_url}`, error);
  throw error;
}
const fileset = await vision.FilesetResolver.forVisionTasks(`${config.runtime_url}/wasm`);
const classifier = await vision.ImageClassifier.createFromOptions(fileset, {
  baseOptions: { modelAssetPath: config.model_url, delegate: "CPU" },
  maxResults: -1,
  runningMode: "IMAGE",
});
$("status").textContent = `ready: MediaPipe Tasks ${config.mediapipe_version}, on this device's CPU`;

function scoresOf(result) {
  const scores = new Array(labels.length).fill(0);
  for (const c of result.classifications[0].categories) {
    if (c.index >= 0 && c.index < scores.length) scores[c.index] = c.score;
  }
  return scores;
}

const decide = (scores) => decideWith(scores, labels, unknownIndex, floor);

function classify(image) {
  const start = performance.now();
  const result = classifier.classify(image);
  const ms = performance.now() - start;
  return { scores: scoresOf(result), ms };
}

function show({ scores, ms }, source) {
  const d = decide(scores);
  $("answer").textContent = d.answer + (d.flagged && d.answer !== "unknown" ? " (out of class?)" : "");
  $("answer").className = d.answer === "unknown" ? "unknown" : "";
  const order = scores.map((s, i) => [s, i]).sort((a, b) => b[0] - a[0]).slice(0, 3);
  $("classes").replaceChildren(...order.map(([s, i]) => {
    const row = document.createElement("div");
    row.className = "bar";
    const name = document.createElement("span");
    name.textContent = labels[i];
    const meter = document.createElement("meter");
    meter.value = s;
    const value = document.createElement("span");
    value.textContent = s.toFixed(3);
    row.append(name, meter, value);
    return row;
  }));
  $("timing").textContent = `${ms.toFixed(1)} ms per image (${source})` +
    (floor > 0 ? ` · answer floor ${floor.toFixed(3)}` : "");
}

// A photo as the camera app or the file picker hands it over. EXIF orientation is
// applied; colour profiles are not (edgetl trained on decoded values without them).
async function decode(blob) {
  return createImageBitmap(blob, { imageOrientation: "from-image", colorSpaceConversion: "none" });
}

function drawBitmap(bitmap) {
  const view = $("view");
  view.width = bitmap.width;
  view.height = bitmap.height;
  view.getContext("2d").drawImage(bitmap, 0, 0);
  view.style.display = "block";
}

$("photo").addEventListener("change", async (event) => {
  const file = event.target.files[0];
  if (!file) return;
  let bitmap;
  try {
    bitmap = await decode(file);
  } catch (error) {
    fail(`this browser cannot decode ${file.name}`, error);
    return;
  }
  drawBitmap(bitmap);
  show(classify(bitmap), "photo");
  bitmap.close();
});

// The fake camera's frames (make web-check) carry index strips above and below the
// photo: the centre square is the photo. The live camera hands MediaPipe the whole
// frame, resized as edgetl's runner resizes a camera frame (no crop).
const crop = document.createElement("canvas");
function centreSquare(video) {
  const w = video.videoWidth, h = video.videoHeight, side = Math.min(w, h);
  crop.width = side;
  crop.height = side;
  crop.getContext("2d").drawImage(video, (w - side) / 2, (h - side) / 2, side, side, 0, 0, side, side);
  return crop;
}

async function openCamera(constraints) {
  const stream = await navigator.mediaDevices.getUserMedia({ video: constraints, audio: false });
  const video = $("video");
  video.srcObject = stream;
  await video.play();
  return video;
}

function eachFrame(video, onFrame) {
  const step = () => { if (onFrame() !== false) video.requestVideoFrameCallback(step); };
  video.requestVideoFrameCallback(step);
}

if (window.isSecureContext && navigator.mediaDevices?.getUserMedia) {
  $("camera").disabled = false;
  $("camera").addEventListener("click", async () => {
    $("camera").disabled = true;  // one stream, one frame loop
    let video;
    try {
      video = await openCamera({ facingMode: "environment", width: { ideal: 640 } });
    } catch (error) {
      fail("the camera did not open", error);
      $("camera").disabled = false;
      return;
    }
    video.style.display = "block";
    video.style.width = "100%";
    eachFrame(video, () => {
      show(classify(video), "live camera");
    });
  });
} else {
  $("cameraNote").textContent =
    "Live camera needs https or localhost; 'Take or pick a photo' uses the camera app instead.";
}

// ---- make web-check: the same paths, driven by a script in headless Chromium ----

async function report(mode, rows) {
  classifier.close();  // MediaPipe flushes its usage metrics here: the policy blocks them
  await new Promise((done) => setTimeout(done, 1000));
  await fetch("check/results", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ mode, rows, blocked, userAgent: navigator.userAgent }),
  });
  $("status").textContent = `check done: ${rows.length} images`;
}

async function checkFiles(count) {
  const rows = [];
  for (let index = 0; index < count; index++) {
    const blob = await (await fetch(`check/image/${index}`)).blob();
    const bitmap = await decode(blob);
    rows.push({ index, ...classify(bitmap) });
    bitmap.close();
  }
  await report("files", rows);
}

// The fake camera's frames carry their image's index in a strip of 8x8 blocks above
// the picture and its complement below it (tests/tools/web_check.py draws them), so
// each classified frame is matched to its image however the stream is timed.
function frameIndex(video, frame) {
  const grab = document.createElement("canvas");
  grab.width = video.videoWidth;
  grab.height = video.videoHeight;
  const context = grab.getContext("2d", { willReadFrequently: true });
  return () => {
    context.drawImage(video, 0, 0);
    const read = (y) => {
      let value = 0;
      for (let bit = 0; bit < frame.bits; bit++) {
        const x = bit * frame.block + frame.block / 2;
        const [r, g, b] = context.getImageData(x, y, 1, 1).data;
        value = value * 2 + ((r + g + b) / 3 > 128 ? 1 : 0);
      }
      return value;
    };
    const top = read(frame.strip / 2), bottom = read(grab.height - frame.strip / 2);
    return (top ^ bottom) === (1 << frame.bits) - 1 ? top : null;
  };
}

async function checkCamera(count, frame) {
  const video = await openCamera({ width: { exact: frame.width }, height: { exact: frame.height } });
  const indexOf = frameIndex(video, frame);
  const rows = new Map();
  let frames = 0;
  const started = performance.now();
  await new Promise((done) => {
    eachFrame(video, () => {
      frames++;
      const index = indexOf();
      if (index !== null && index < count && !rows.has(index)) {
        rows.set(index, { index, ...classify(centreSquare(video)) });
      }
      const out = rows.size === count || performance.now() - started > frame.timeout_ms;
      if (out) done();
      return !out;
    });
  });
  await report("camera", [...rows.values()]);
  video.srcObject.getTracks().forEach((track) => track.stop());
  console.log(`camera check: ${frames} frames`);
}

if (config.check?.mode === "files") await checkFiles(config.check.count);
if (config.check?.mode === "camera") await checkCamera(config.check.count, config.check.frame);
