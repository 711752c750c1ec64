-- Wireshark/tshark description of the sensor's own IPFIX elements (issue 12).
--
-- Wireshark's IPFIX dissector (cflow) decodes every standard element of the sensor's
-- messages but shows the sensor's own elements only as "Enterprise Private entry" with
-- hex bytes: it has no table for user enterprise elements. This postdissector reads the
-- same messages again, keeps the templates each exporter sent, and adds a "sensor" tree
-- per data record with named, typed, filterable fields:
--
--   sensor.src_pid  sensor.src_comm  sensor.src_uid  sensor.src_unit
--   sensor.dst_pid  sensor.dst_comm  sensor.dst_uid  sensor.dst_unit
--   sensor.src_country  sensor.dst_country  sensor.src_threat_lists  sensor.dst_threat_lists
--   sensor.exported_records  sensor.dropped_records   (the exporter's options record)
--
-- Use:  tshark -X lua_script:sensor-ipfix.lua -d udp.port==4739,cflow -V -r FILE
--   or  copy it to ~/.local/lib/wireshark/plugins/ (Wireshark loads it at start).
-- The enterprise number is a preference (sensor.pen, default 32473, RFC 5612's number for
-- documentation): set it to `ipfix.enterprise_number` of your sensors, e.g.
-- `-o sensor.pen:12345`.

local proto = Proto("sensor", "sensor flow sensor IPFIX elements")

local f = {
    src_pid = ProtoField.uint32("sensor.src_pid", "Source process id"),
    src_comm = ProtoField.string("sensor.src_comm", "Source command"),
    src_uid = ProtoField.uint32("sensor.src_uid", "Source user id"),
    src_unit = ProtoField.string("sensor.src_unit", "Source unit or cgroup"),
    dst_pid = ProtoField.uint32("sensor.dst_pid", "Destination process id"),
    dst_comm = ProtoField.string("sensor.dst_comm", "Destination command"),
    dst_uid = ProtoField.uint32("sensor.dst_uid", "Destination user id"),
    dst_unit = ProtoField.string("sensor.dst_unit", "Destination unit or cgroup"),
    src_country = ProtoField.string("sensor.src_country", "Source country"),
    dst_country = ProtoField.string("sensor.dst_country", "Destination country"),
    src_threat = ProtoField.string("sensor.src_threat_lists", "Source threat lists"),
    dst_threat = ProtoField.string("sensor.dst_threat_lists", "Destination threat lists"),
    exported = ProtoField.uint64("sensor.exported_records", "Records exported"),
    dropped = ProtoField.uint64("sensor.dropped_records", "Records dropped"),
    unknown = ProtoField.bytes("sensor.unknown", "Unknown sensor element"),
}
proto.fields = {
    f.src_pid, f.src_comm, f.src_uid, f.src_unit, f.dst_pid, f.dst_comm, f.dst_uid,
    f.dst_unit, f.src_country, f.dst_country, f.src_threat, f.dst_threat, f.exported,
    f.dropped, f.unknown,
}

-- Element id (under the sensor's enterprise number) to its field, as the README lists them.
local by_id = {
    [1] = f.src_pid, [2] = f.src_comm, [3] = f.src_uid, [4] = f.src_unit,
    [5] = f.dst_pid, [6] = f.dst_comm, [7] = f.dst_uid, [8] = f.dst_unit,
    [9] = f.src_country, [10] = f.dst_country, [11] = f.src_threat, [12] = f.dst_threat,
    [20] = f.exported, [21] = f.dropped,
}
local numeric = { [1] = true, [3] = true, [5] = true, [7] = true, [20] = true, [21] = true }

proto.prefs.pen = Pref.uint("Enterprise number", 32473,
    "ipfix.enterprise_number of the sensors whose messages these are")

local version_field = Field.new("cflow.version")

-- Templates by exporter, observation domain and template id: a list of
-- {frame, fields}, so a frame dissected again (Wireshark's GUI does) finds the template
-- that was current when it arrived, not a later one.
local templates = {}

function proto.init()
    templates = {}
end

local function template_at(key, frame)
    local best
    for _, t in ipairs(templates[key] or {}) do
        if t.frame <= frame and (best == nil or t.frame >= best.frame) then
            best = t
        end
    end
    return best
end

local function remember(key, frame, fields)
    local list = templates[key]
    if list == nil then
        list = {}
        templates[key] = list
    end
    for _, t in ipairs(list) do
        if t.frame == frame then
            t.fields = fields
            return
        end
    end
    list[#list + 1] = { frame = frame, fields = fields }
end

-- Reads `count` field specifiers at `at`; returns them and the offset after them, or nil
-- when the set ends first.
local function read_specifiers(tvb, at, stop, count)
    local fields = {}
    for _ = 1, count do
        if at + 4 > stop then return nil end
        local raw, len = tvb(at, 2):uint(), tvb(at + 2, 2):uint()
        at = at + 4
        local pen = 0
        if raw >= 0x8000 then
            if at + 4 > stop then return nil end
            pen = tvb(at, 4):uint()
            at = at + 4
        end
        fields[#fields + 1] = { id = raw % 0x8000, len = len, pen = pen }
    end
    return fields, at
end

local function min_length(fields)
    local n = 0
    for _, fd in ipairs(fields) do
        n = n + (fd.len == 65535 and 1 or fd.len)
    end
    return n
end

-- Adds one data record's sensor elements under `tree`; returns the offset after the
-- record, or nil when the record does not fit in the set.
local function add_record(tvb, at, stop, fields, tree, index, pen)
    local items = {}
    for _, fd in ipairs(fields) do
        local len, data = fd.len, at
        if len == 65535 then
            if at + 1 > stop then return nil end
            len = tvb(at, 1):uint()
            data = at + 1
            if len == 255 then
                if at + 3 > stop then return nil end
                len = tvb(at + 1, 2):uint()
                data = at + 3
            end
        end
        if data + len > stop then return nil end
        if fd.pen == pen then
            items[#items + 1] = { id = fd.id, at = at, data = data, len = len }
        end
        at = data + len
    end
    if #items > 0 then
        local sub = tree:add(proto, tvb(items[1].at, at - items[1].at),
            "Sensor elements of data record " .. index)
        for _, it in ipairs(items) do
            local field = by_id[it.id]
            if field == nil then
                sub:add(f.unknown, tvb(it.data, it.len)):append_text(" (element " .. it.id .. ")")
            elseif numeric[it.id] then
                local r = tvb(it.data, it.len)
                if it.len == 8 then
                    sub:add(field, r, r:uint64())
                else
                    sub:add(field, r, r:uint())
                end
            elseif it.len == 0 then
                sub:add(field, tvb(it.at, it.data - it.at), "")
            else
                sub:add(field, tvb(it.data, it.len), tvb(it.data, it.len):string(ENC_UTF_8))
            end
        end
    end
    return at
end

-- One IPFIX message at `at` of `tvb`: templates remembered, data records described.
local function message(tvb, at, pinfo, tree, exporter)
    if tvb:len() < at + 16 or tvb(at, 2):uint() ~= 10 then return end
    local stop = at + tvb(at + 2, 2):uint()
    if stop > tvb:len() then stop = tvb:len() end
    local domain = tvb(at + 12, 4):uint()
    local pen = proto.prefs.pen
    local frame = pinfo.number
    local index = 0
    at = at + 16
    while at + 4 <= stop do
        local set_id, set_len = tvb(at, 2):uint(), tvb(at + 2, 2):uint()
        if set_len < 4 or at + set_len > stop then return end
        local body, set_stop = at + 4, at + set_len
        if set_id == 2 or set_id == 3 then
            local i = body
            while i + 4 <= set_stop do
                local tid, count = tvb(i, 2):uint(), tvb(i + 2, 2):uint()
                i = i + 4
                if set_id == 3 then
                    if i + 2 > set_stop then break end
                    i = i + 2 -- scope field count: the scope fields are specifiers too
                end
                if count == 0 then break end -- padding, or a withdrawal
                local fields, after = read_specifiers(tvb, i, set_stop, count)
                if fields == nil then break end
                remember(exporter .. "/" .. domain .. "/" .. tid, frame, fields)
                i = after
            end
        elseif set_id >= 256 then
            local t = template_at(exporter .. "/" .. domain .. "/" .. set_id, frame)
            if t ~= nil then
                local min = min_length(t.fields)
                local i = body
                -- Padding is shorter than any record.
                while min > 0 and i + min <= set_stop do
                    index = index + 1
                    local after = add_record(tvb, i, set_stop, t.fields, tree, index, pen)
                    if after == nil then break end
                    i = after
                end
            end
        end
        at = set_stop
    end
end

function proto.dissector(tvb, pinfo, tree)
    local versions = { version_field() }
    if #versions == 0 then return end
    local exporter = tostring(pinfo.src) .. ":" .. tostring(pinfo.src_port)
    for _, v in ipairs(versions) do
        local source = v.source or tvb
        message(source, v.offset, pinfo, tree, exporter)
    end
end

register_postdissector(proto)
