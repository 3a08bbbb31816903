-- wrk script: POST JSON events round-robin from a file (one body per line), check every reply,
-- and print a machine-readable summary line starting with "WRKJSON ".
--
--   wrk -t1 -c64 -d10s --latency -s loadtests/wrk/post.lua http://127.0.0.1:8000/hooks/support \
--       -- bodies.jsonl [SAMPLE_EVERY] [EXTRA_TEXT]
--
-- Requests are pre-formatted in init(), so request() costs one table lookup.
--
-- response() sees every reply (defining it makes wrk hand each reply's body to Lua):
--   * a status outside 2xx counts in "bad_status";
--   * cheap check, every reply: the body contains `"echo: ` and `"turn"`, else "bad_body";
--   * full check, every SAMPLE_EVERY-th reply (default 16): the body is one JSON object with exactly
--     two members, "reply" = "echo: " + the text of one of the events in the bodies file (or
--     EXTRA_TEXT), and "turn" = an integer in 1..10; else "bad_body".
-- The first bad reply is kept (status and up to 200 bytes of body) for the report.
-- Each wrk thread has its own Lua state, so done() adds up the counters of every thread through
-- the handles setup() kept.

local threads = {}

function setup(thread)
   table.insert(threads, thread)
end

local reqs = {}
local n = 0
local i = 0
local texts = {}
local sample_every = 16
bad_status = 0
bad_body = 0
checked = 0
sampled = 0
first_bad = ""

function init(args)
   local path = args[1]
   if path == nil then
      error("usage: wrk ... -s post.lua URL -- BODIES_FILE [SAMPLE_EVERY] [EXTRA_TEXT]")
   end
   if args[2] ~= nil and #args[2] > 0 then
      sample_every = assert(tonumber(args[2]), "SAMPLE_EVERY must be a number")
   end
   if args[3] ~= nil and #args[3] > 0 then
      texts[args[3]] = true
   end
   local f = assert(io.open(path, "r"))
   local headers = { ["Content-Type"] = "application/json" }
   for line in f:lines() do
      if #line > 0 then
         n = n + 1
         reqs[n] = wrk.format("POST", nil, headers, line)
         local text = string.match(line, '"text"%s*:%s*"(.-)"')
         if text ~= nil then
            texts[text] = true
         end
      end
   end
   f:close()
   if n == 0 then
      error("no bodies in " .. path)
   end
end

function request()
   i = i + 1
   if i > n then
      i = 1
   end
   return reqs[i]
end

local function full_ok(body)
   local reply = string.match(body, '"reply"%s*:%s*"echo: (.-)"%s*[,}]')
   local turn = tonumber(string.match(body, '"turn"%s*:%s*(%d+)%s*[,}]') or "")
   if reply == nil or not texts[reply] or turn == nil or turn < 1 or turn > 10 then
      return false
   end
   -- nothing else in the object: with both members removed, only "{", one "," and "}" are left
   local rest = string.gsub(body, '"reply"%s*:%s*".-"', "", 1)
   rest = string.gsub(rest, '"turn"%s*:%s*%d+', "", 1)
   return string.match(rest, "^%s*{%s*,%s*}%s*$") ~= nil
end

local function note_bad(status, body)
   if first_bad == "" then
      first_bad = status .. " " .. string.sub(body or "", 1, 200)
   end
end

function response(status, headers, body)
   checked = checked + 1
   if status < 200 or status > 299 then
      bad_status = bad_status + 1
      note_bad(status, body)
   elseif body == nil or not string.find(body, '"echo: ', 1, true) or not string.find(body, '"turn"', 1, true) then
      bad_body = bad_body + 1
      note_bad(status, body)
   elseif checked % sample_every == 0 then
      sampled = sampled + 1
      if not full_ok(body) then
         bad_body = bad_body + 1
         note_bad(status, body)
      end
   end
end

local function json_string(s)
   return '"' .. string.gsub(s, '[%c"\\\128-\255]', function(c)
      return string.format("\\u%04x", string.byte(c))
   end) .. '"'
end

function done(summary, latency, requests)
   local e = summary.errors
   local nb_status, nb_body, nb_checked, nb_sampled, bad = 0, 0, 0, 0, ""
   for _, t in ipairs(threads) do
      nb_status = nb_status + (t:get("bad_status") or 0)
      nb_body = nb_body + (t:get("bad_body") or 0)
      nb_checked = nb_checked + (t:get("checked") or 0)
      nb_sampled = nb_sampled + (t:get("sampled") or 0)
      if bad == "" then
         bad = t:get("first_bad") or ""
      end
   end
   io.write(string.format(
      'WRKJSON {"requests":%d,"duration_us":%d,"bytes":%d,' ..
      '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
      '"checked":%d,"sampled":%d,"bad_status":%d,"bad_body":%d,"first_bad":%s,' ..
      '"latency_us":{"min":%d,"mean":%.2f,"stdev":%.2f,"max":%d,' ..
      '"p50":%d,"p75":%d,"p90":%d,"p95":%d,"p99":%d,"p999":%d}}\n',
      summary.requests, summary.duration, summary.bytes,
      e.connect, e.read, e.write, e.status, e.timeout,
      nb_checked, nb_sampled, nb_status, nb_body, json_string(bad),
      latency.min, latency.mean, latency.stdev, latency.max,
      latency:percentile(50), latency:percentile(75), latency:percentile(90),
      latency:percentile(95), latency:percentile(99), latency:percentile(99.9)))
end
