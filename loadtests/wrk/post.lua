-- wrk script: POST JSON events round-robin from a file (one body per line),
-- and print a machine-readable summary line starting with "WRKJSON ".
--
--   wrk -t1 -c64 -d10s -s loadtests/wrk/post.lua http://127.0.0.1:8000/hooks/support -- bodies.jsonl
--
-- Requests are pre-formatted in init(), so request() costs one table lookup.

local reqs = {}
local n = 0
local i = 0

function init(args)
   local path = args[1]
   if path == nil then
      error("usage: wrk ... -s post.lua URL -- BODIES_FILE")
   end
   local f = assert(io.open(path, "r"))
   local headers = { ["Content-Type"] = "application/json" }
   for line in f:lines() do
      if #line > 0 then
         n = n + 1
         reqs[n] = wrk.format("POST", wrk.path, headers, line)
      end
   end
   f:close()
   if n == 0 then
      error("no request bodies in " .. path)
   end
end

function request()
   i = i % n + 1
   return reqs[i]
end

function done(summary, latency, requests)
   local e = summary.errors
   io.write(string.format(
      'WRKJSON {"requests":%d,"duration_us":%d,"bytes":%d,' ..
      '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
      '"latency_us":{"min":%d,"mean":%.2f,"stdev":%.2f,"max":%d,' ..
      '"p50":%d,"p75":%d,"p90":%d,"p95":%d,"p99":%d,"p999":%d}}\n',
      summary.requests, summary.duration, summary.bytes,
      e.connect, e.read, e.write, e.status, e.timeout,
      latency.min, latency.mean, latency.stdev, latency.max,
      latency:percentile(50), latency:percentile(75), latency:percentile(90),
      latency:percentile(95), latency:percentile(99), latency:percentile(99.9)))
end
