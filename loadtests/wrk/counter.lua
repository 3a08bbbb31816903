-- wrk script for loadtests/store_bench.py: POST {"user": "uN"} round-robin over USERS users
-- (default 64); with ASYNC set, ask for `Prefer: respond-async`. Counts replies outside 2xx and
-- prints "WRKJSON {...}" with the totals.
--
--   wrk -t1 -c64 -d5s -s loadtests/wrk/counter.lua http://127.0.0.1:8000/hooks/count -- 64 async

local threads = {}
function setup(thread) table.insert(threads, thread) end

local reqs = {}
local n, i = 0, 0
bad = 0

function init(args)
   local users = tonumber(args[1] or "64")
   local headers = { ["Content-Type"] = "application/json" }
   if args[2] == "async" then headers["Prefer"] = "respond-async" end
   for u = 1, users do
      n = n + 1
      reqs[n] = wrk.format("POST", nil, headers, string.format('{"user":"u%d"}', u))
   end
end

function request()
   i = i % n + 1
   return reqs[i]
end

function response(status, headers, body)
   if status < 200 or status > 299 then bad = bad + 1 end
end

function done(summary, latency, requests)
   local b = 0
   for _, t in ipairs(threads) do b = b + (t:get("bad") or 0) end
   io.write(string.format('WRKJSON {"requests": %d, "bad": %d, "seconds": %f, "p50_us": %d, "p99_us": %d}\n',
      summary.requests, b, summary.duration / 1e6, latency:percentile(50), latency:percentile(99)))
end
