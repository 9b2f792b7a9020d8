-- wrk script for bench/webhook.py: POST one Alertmanager v4 payload per request, each one a different alert.
--
-- Configured through the environment (bench/webhook.py sets these):
--   WEBHOOK_BENCH_BODY     path of a JSON body template; @@ID@@ and @@SO@@ in it are replaced per request
--   WEBHOOK_BENCH_TARGETS  comma-separated ScaledObject names that @@SO@@ cycles through
--   WEBHOOK_BENCH_TOKEN    bearer token for the Authorization header (optional)
--
-- @@ID@@ becomes 16 hex digits, unique per request across wrk's threads (thread number, then a counter);
-- the template puts it in the fingerprint and in an `instance` label, so no two requests are the same alert.
-- done() prints one line "WRK_JSON {...}" with the totals, for the bench to parse.

wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"

local threads = {}
local thread_count = 0

function setup(thread)
   thread:set("tid", thread_count)
   thread_count = thread_count + 1
   table.insert(threads, thread)
end

local pieces = {}  -- literal strings, and {marker = "ID"|"SO"} tables
local targets = {}
counter = 0  -- global, so done() can read it from each thread

local function read_file(path)
   local file = assert(io.open(path, "rb"), "cannot open WEBHOOK_BENCH_BODY " .. tostring(path))
   local text = file:read("*a")
   file:close()
   return text
end

function init(args)
   local text = read_file(os.getenv("WEBHOOK_BENCH_BODY"))
   local start = 1
   while true do
      local i, j, name = string.find(text, "@@(%u+)@@", start)
      if not i then
         table.insert(pieces, string.sub(text, start))
         break
      end
      table.insert(pieces, string.sub(text, start, i - 1))
      table.insert(pieces, {marker = name})
      start = j + 1
   end
   for name in string.gmatch(os.getenv("WEBHOOK_BENCH_TARGETS") or "", "[^,]+") do
      table.insert(targets, name)
   end
   local token = os.getenv("WEBHOOK_BENCH_TOKEN")
   if token and token ~= "" then
      wrk.headers["Authorization"] = "Bearer " .. token
   end
end

function request()
   counter = counter + 1
   local id = string.format("%04x%012x", tid, counter)
   local target = #targets > 0 and targets[counter % #targets + 1] or ""
   local out = {}
   for k, piece in ipairs(pieces) do
      if type(piece) == "string" then
         out[k] = piece
      elseif piece.marker == "ID" then
         out[k] = id
      else
         out[k] = target
      end
   end
   return wrk.format(nil, nil, nil, table.concat(out))
end

function done(summary, latency, requests)
   local sent = 0
   for _, thread in ipairs(threads) do
      sent = sent + (thread:get("counter") or 0)
   end
   local e = summary.errors
   io.write(string.format(
      'WRK_JSON {"duration_us": %d, "requests": %d, "bytes": %d, "built": %d, '
         .. '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}, '
         .. '"latency_us": {"mean": %.1f, "max": %d, "p50": %d, "p90": %d, "p99": %d}}\n',
      summary.duration, summary.requests, summary.bytes, sent,
      e.connect, e.read, e.write, e.status, e.timeout,
      latency.mean, latency.max, latency:percentile(50), latency:percentile(90), latency:percentile(99)))
end
