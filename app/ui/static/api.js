// The API as the page uses it: the signed-in key, JSON requests, downloads, and a job's event stream.
// The key lives in sessionStorage (gone with the tab) and goes out as a Bearer header; fetch, not
// EventSource, reads the stream, because EventSource cannot send headers.

const KEY = "mambaft.apiKey";

export class ApiError extends Error {
  constructor(status, body) {
    const error = (body && body.error) || {};
    const param = error.param ? ` (${error.param})` : "";
    super(`${status} ${error.code || "error"}: ${error.message || "request failed"}${param}`);
    this.status = status;
  }
}

export const key = {
  get: () => sessionStorage.getItem(KEY),
  set: (value) => sessionStorage.setItem(KEY, value),
  clear: () => sessionStorage.removeItem(KEY),
};

function headers(extra = {}) {
  const value = key.get();
  return value ? { ...extra, Authorization: `Bearer ${value}` } : extra;
}

async function send(method, path, body) {
  const init = { method, headers: headers() };
  if (body instanceof FormData) {
    init.body = body;
  } else if (body !== undefined) {
    init.headers = headers({ "Content-Type": "application/json" });
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  if (!response.ok) {
    throw new ApiError(response.status, await response.json().catch(() => null));
  }
  return response;
}

export const getJson = async (path) => (await send("GET", path)).json();
export const postJson = async (path, body) => (await send("POST", path, body)).json();
export const getBlob = async (path) => (await send("GET", path)).blob();

// Calls `onEvent(event)` for each of the job's events, oldest first, until the job ends (the server's
// [DONE]) or `signal` aborts. A stream that ends early (the server's time limit, a dropped connection)
// is reopened after the last event seen.
export async function followEvents(jobId, onEvent, signal) {
  let after = null;
  while (!signal.aborted) {
    const query = after ? `&after=${encodeURIComponent(after)}` : "";
    const response = await fetch(`/v1/fine_tuning/jobs/${encodeURIComponent(jobId)}/events?stream=true${query}`, {
      headers: headers(),
      signal,
    });
    if (!response.ok) {
      throw new ApiError(response.status, await response.json().catch(() => null));
    }
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value;
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const frame = parseFrame(buffer.slice(0, end));
        buffer = buffer.slice(end + 2);
        if (frame.data === "[DONE]") return;
        if (frame.event === "error") throw new ApiError(401, JSON.parse(frame.data));
        if (frame.id) after = frame.id;
        onEvent(JSON.parse(frame.data));
      }
    }
    await new Promise((resolve) => setTimeout(resolve, 1000));
  }
}

function parseFrame(text) {
  const frame = { event: "message", data: "", id: null };
  for (const line of text.split("\n")) {
    const colon = line.indexOf(":");
    const field = line.slice(0, colon);
    const value = line.slice(colon + 1).replace(/^ /, "");
    if (field === "data") frame.data += value;
    else if (field === "id") frame.id = value;
    else if (field === "event") frame.event = value;
  }
  return frame;
}
