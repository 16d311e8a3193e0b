import ArgumentParser
import Foundation
import ZipARCore
import CKernels

/// `zipar bench`: forward-pass cost against the weight-streaming limit, and raster vs ZipAR windows
/// measured side by side in one run (interleaved, so machine noise hits every mode alike).
struct BenchCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "bench", abstract: "Measure forward passes, ZipAR speed-ups and VQ decoding.")

    @OptionGroup var modelOptions: ModelOptions
    @Option(help: "Benchmark a random-weight LlamaGen size instead of a model: gpt-b, gpt-l, gpt-xl, gpt-xxl, gpt-3b.")
    var randomInit: String?
    @Option(help: "Token grid HxW (square; with --random-init). Default 16x16.")
    var grid: String?
    @Option(help: "ZipAR windows to compare with raster, e.g. 16,8,4.")
    var windows: String = "8"
    @Option(help: "ZipAR policy for the windows: ideal or upstream.")
    var policy: String = "ideal"
    @Option(help: "KV cache types to compare, e.g. fp32,fp16,int8,kivi2,kivi4,zipcache (every mode runs with each). Default: --kv-cache.")
    var kvCaches: String?
    @Flag(help: "Skip raster decoding (long grids): only the windows run; speed-ups are then against the first mode.")
    var noRaster = false
    @Flag(help: "Only time single forward passes with each --kv-caches type over a cache filled to --kv-fill (interleaved, median), then stop.")
    var kvPasses = false
    @Option(help: "Fraction of the image slots written (and compressed) before the --kv-passes timing.")
    var kvFill: Double = 0.9
    @Option(help: "Also run each window w > MIN with the adaptive window MIN..w.")
    var adaptiveWindow: Int?
    @Option(help: "CFG scale used for the runs (> 1 doubles the batch).")
    var cfgScale: Float = 4.0
    @Option(help: "Images per mode; the median is reported.")
    var runs: Int = 1
    @Flag(help: "Skip the per-pass table.")
    var noPasses = false
    @Flag(help: "Skip the VQ decoder timing.")
    var noVq = false
    @Flag(help: "Also time an INT8 copy of the VQ decoder (int8-mae, calibrated in memory on --calib random code grids) alternately with fp32, with PSNR against fp32 on 4 held-out random grids.")
    var vqInt8 = false
    @Flag(help: "Only the VQ decoder timing (skip the transformer).")
    var vqOnly = false
    @Option(help: "With --vq-int8: side of the random calibration grids (default: the bench grid, at most 4 for the VQ-16 sized random-init decoder).")
    var vqCalibGrid: Int?
    @Flag(help: "Also print where the time of each pass goes (ms per pass by component).")
    var profile = false
    @Flag(help: "Print JSON instead of tables.")
    var json = false
    @Option(help: "Weight schemes to compare side by side, e.g. fp32,w8a8,w4a8-dgq,w1 (an fp32 model is quantized in memory).")
    var schemes: String?
    @Option(help: "With --schemes: random-token calibration samples for the in-memory DGQ search (speed only; quality needs `zipar quantize`).")
    var calib: Int = 1
    @Flag(help: "Only compare the decode kernel with OpenBLAS sgemm/sgemv on a 201 MB weight, by row count.")
    var kernels = false
    @Flag(help: "Only compare single VQ decoder convolutions, fp32 (im2col + sgemm) against INT8 (the int8-mae kernel), by shape.")
    var convKernels = false

    func validate() throws {
        guard runs >= 1, runs <= 100 else { throw ValidationError("--runs must be between 1 and 100") }
        _ = try parseIntList(windows, flag: "--windows")
        guard ZipARPolicy(rawValue: policy) != nil, policy != "eol" else { throw ValidationError("--policy must be ideal or upstream") }
        if let s = schemes { _ = try parseSchemes(s) }
        guard calib >= 1, calib <= 64 else { throw ValidationError("--calib must be between 1 and 64") }
        if randomInit != nil && modelOptions.model != nil { throw ValidationError("give either --model or --random-init, not both") }
        guard kvFill > 0, kvFill < 1 else { throw ValidationError("--kv-fill must be in (0, 1)") }
        if (vqInt8 || vqOnly) && noVq { throw ValidationError("--vq-int8 and --vq-only need the VQ timing (drop --no-vq)") }
        if let g = vqCalibGrid, g < 1 || g > 64 { throw ValidationError("--vq-calib-grid must be between 1 and 64") }
        try modelOptions.checkSparsity(try kvCaches.map { try parseKVCaches($0, flag: "--kv-caches") } ?? [modelOptions.kvPrecision])
        if try noRaster && parseIntList(windows, flag: "--windows").isEmpty { throw ValidationError("--no-raster needs --windows") }
        if let g = grid {
            do { let (h, w) = try ScheduleCommand.parseGrid(g); guard h == w else { throw ZipARError("--grid must be square (LlamaGen grids are)") } }
            catch let e as ZipARError { throw ValidationError(e.message) }
        }
    }

    func run() throws {
        modelOptions.apply()
        if kernels { return runKernels() }
        if convKernels { return try runConvKernels() }
        // One model per weight scheme, each built from the same fp32 weights and quantized in memory.
        var schemeList = try schemes.map { try parseSchemes($0) } ?? []
        var vq: VQDecoder? = nil
        var name = ""
        var drawn = modelOptions.drawn(nil)
        var makeGPT: () throws -> GPT
        if let r = randomInit {
            let side = try grid.map { try ScheduleCommand.parseGrid($0).0 } ?? 16
            var cfg = try GPTConfig.named(r, grid: side)
            cfg.num_classes = 1000
            makeGPT = { try GPT(randomWithConfig: cfg, seed: 1) }
            vq = noVq ? nil : VQDecoder.randomInit(config: VQConfig(), seed: 2)
            name = "\(r) (random init)"
        } else {
            let dir = try modelOptions.open()
            if let g = grid, try ScheduleCommand.parseGrid(g).0 != dir.gpt.gridSize {
                throw ZipARError("\(dir.name) generates a \(dir.gpt.gridSize)x\(dir.gpt.gridSize) grid; --grid must match or be left out")
            }
            makeGPT = { try dir.loadGPT() }
            vq = noVq ? nil : try dir.loadVQ()
            name = dir.name
            drawn = modelOptions.drawn(dir)
        }
        if vqOnly, let vq {
            let side = try randomInit != nil ? (grid.map { try ScheduleCommand.parseGrid($0).0 } ?? 16) : modelOptions.open().gpt.gridSize
            var report: [String: Any] = ["model": name]
            try benchVQ(vq, side: side, randomInit: randomInit != nil, report: &report)
            if json { print(String(decoding: try JSONSerialization.data(withJSONObject: report, options: [.prettyPrinted, .sortedKeys]), as: UTF8.self)) }
            return
        }
        var models: [(label: String, gpt: GPT)] = []
        if schemeList.isEmpty {
            let g = try makeGPT()
            models = [(g.weightScheme.rawValue, g)]
            schemeList = [g.weightScheme]
        } else {
            for s in schemeList {
                let g = try makeGPT()
                if s != .fp32 {
                    guard g.weightScheme == .fp32 else { throw ZipARError("\(name) is already quantized (\(g.weightScheme.rawValue)); --schemes needs an fp32 model") }
                    let t0 = Date()
                    try quantizeForBench(g, s)
                    let how = s == .w4a8dgq ? String(format: "; DGQ calibrated on %d random-token sample(s)", calib) : s == .w1 ? "; post-training binarization, timing only" : ""
                    if !json { eprint(String(format: "quantized %@ in memory to %@ (%.0f s%@)", name, s.rawValue, Date().timeIntervalSince(t0), how)) }
                }
                models.append((s.rawValue, g))
            }
        }
        let gpt = models[0].gpt
        let multi = models.count > 1
        let side = gpt.config.gridSize
        let p = ZipARPolicy(rawValue: policy)!
        let windowList = try parseIntList(windows, flag: "--windows").filter { $0 < side }
        if noRaster && windowList.isEmpty { throw ZipARError("--no-raster: no window is narrower than the grid width \(side)") }
        let schedules = (noRaster ? [] : [try Schedule.make(height: side, width: side, window: side)]) +
            (try windowList.map { try Schedule.make(height: side, width: side, window: $0, policy: p) })
        var report: [String: Any] = ["model": name, "grid": [side, side], "threads": Parallel.threads, "cfg_scale": Double(cfgScale)]
        let weightsMB = Double(gpt.streamedBytesPerPass) / 1e6
        let bandwidth = Measure.readBandwidth()
        let limitMs = weightsMB / bandwidth
        report["weights_streamed_mb"] = weightsMB; report["bandwidth_gbs"] = bandwidth; report["limit_ms"] = limitMs
        report["schemes"] = models.map { ["scheme": $0.label, "weights_streamed_mb": Double($0.gpt.streamedBytesPerPass) / 1e6] }
        if !json {
            print("zipar bench: \(name), \(String(format: "%.1fM", Double(gpt.parameterCount) / 1e6)) params, \(side)x\(side) grid, \(Parallel.threads) threads")
            for m in models {
                let mb = Double(m.gpt.streamedBytesPerPass) / 1e6
                print(String(format: "weights streamed per pass %.1f MB (%@); measured read bandwidth %.1f GB/s -> limit %.1f ms/pass", mb, m.label, bandwidth, mb / bandwidth))
            }
        }

        if kvPasses { return try runKVPasses(gpt: gpt, schedules: schedules) }

        // 1. Forward-pass cost by number of rows, against the weight-streaming limit (of each scheme).
        if !noPasses {
            let cfg = cfgScale > 1
            var kinds: [(inputs: Int, cfg: Bool)] = [(1, false), (1, true)]
            for k in Set(schedules.map { $0.maxTokensPerStep }).sorted() where k > 1 { kinds.append((k, cfg)) }
            var rows: [[String: Any]] = []
            if !json {
                print("\n|" + (multi ? " weights | MB/pass |" : "") + " inputs | CFG | rows | ms/pass | x limit |" + (multi ? " speed-up vs " + models[0].label + " |" : "") + (profile ? " ms per component |" : "") +
                      "\n|" + (multi ? "---|---|" : "") + "---|---|---|---|---|" + (multi ? "---|" : "") + (profile ? "---|" : ""))
            }
            // Schemes are measured back to back for each row count, so machine noise hits them alike.
            var ms = [[Double]](repeating: [], count: models.count), summaries = [[String]](repeating: [], count: models.count)
            for kind in kinds {
                for (mi, m) in models.enumerated() {
                    let profiler = PassProfiler()
                    PassProfiler.current = profile ? profiler : nil
                    ms[mi].append(Measure.forwardPass(gpt: m.gpt, inputs: kind.inputs, cfg: kind.cfg) * 1e3)
                    PassProfiler.current = nil
                    summaries[mi].append(profiler.summary)
                }
            }
            for (mi, m) in models.enumerated() {
                let mb = Double(m.gpt.streamedBytesPerPass) / 1e6, limit = mb / bandwidth
                for (ki, kind) in kinds.enumerated() {
                    let t = ms[mi][ki], base = ms[0][ki]
                    rows.append(["scheme": m.label, "weights_mb": mb, "inputs": kind.inputs, "cfg": kind.cfg, "ms": t, "x_limit": t / limit, "speedup": base / t])
                    if !json {
                        print("|" + (multi ? String(format: " %@ | %.1f |", m.label, mb) : "") +
                              String(format: " %d | %@ | %d | %.1f | %.2f |", kind.inputs, kind.cfg ? "yes" : "no", kind.inputs * (kind.cfg ? 2 : 1), t, t / limit) +
                              (multi ? String(format: " %.2fx |", base / t) : "") + (profile ? " \(summaries[mi][ki]) |" : ""))
                    }
                }
            }
            report["passes"] = rows
        }

        // 2. Whole images: raster and every window (for every scheme), interleaved run by run.
        var options = GenerationOptions()
        options.sampling.cfgScale = cfgScale
        options.sampling.topK = min(2000, gpt.config.vocab_size)
        options.drawn = drawn
        // Modes: raster, each window, and each window with the adaptive minimum (if asked).
        let caches = try kvCaches.map { try parseKVCaches($0, flag: "--kv-caches") } ?? [modelOptions.kvPrecision]
        var modeList: [(schedule: Schedule, adaptive: Int?, kv: KVCacheKind, model: Int)] = []
        for mi in models.indices {
            for kv in caches {
                modeList += schedules.map { ($0, nil, kv, mi) }
                if let a = adaptiveWindow { modeList += schedules.filter { $0.window < side && $0.window > a }.map { ($0, a, kv, mi) } }
            }
        }
        // Peak resident memory of the image phase only (the bandwidth probe above touched 512 MB).
        let hwmReset = resetPeakRSS()
        let generators = try modeList.map { try Generator(gpt: models[$0.model].gpt, schedule: $0.schedule, kvPrecision: $0.kv, kvOptions: modelOptions.kvOptions) }
        // Class 0 for c2i models; for t2i the model's own empty-caption features (all rows valid).
        let condition: Condition = gpt.config.isT2I
            ? .caption(features: gpt.uncond_embedding!, mask: Array(repeating: true, count: gpt.config.cls_token_num))
            : .classLabel(0)
        var times = [[Double]](repeating: [], count: modeList.count), passes = times, forwardTimes = times
        for run in 0..<runs {
            for (i, g) in generators.enumerated() {
                options.seed = UInt64(run)
                options.adaptiveMinWindow = modeList[i].adaptive
                let r = try g.generate(condition, options: options)
                times[i].append(r.seconds); passes[i].append(Double(r.forwardPasses)); forwardTimes[i].append(r.forwardSeconds)
            }
        }
        let rasterPasses = Double(schedules[0].forwardPasses)
        var modes: [[String: Any]] = []
        var zipvlLines: [(mode: String, window: Int, kv: KVCacheKind, kept: [Double])] = []
        if !json {
            if noRaster { print("\n(--no-raster: speed-up and pass saving are against the first row)") }
            print("\n|" + (multi ? " weights |" : "") + " decoding | window | KV cache | KV MB | x smaller than fp16 | bits/value | s/image | vs fp32 cache | passes | tokens/pass | in passes | ms/pass | speed-up | pass saving | speed-up / saving |\n|" +
                  (multi ? "---|" : "") + "---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        }
        for (i, m) in modeList.enumerated() {
            let s = m.schedule
            let p = passes[i].reduce(0, +) / Double(passes[i].count)
            // Speed-up: the median over runs of (first mode / this mode), each pair measured in the same run,
            // so a change of the host's load between runs does not land on one side of the ratio. The first
            // mode is raster of the first weights scheme, so speed-ups combine ZipAR and the weights.
            let t = Measure.median(times[i]), saving = rasterPasses / p
            let speed = Measure.median(zip(times[0], times[i]).map { $0 / $1 })
            let mode = s.window >= s.width ? "raster" : m.adaptive.map { "zipar adaptive \($0)-" } ?? "zipar \(s.policy.rawValue)"
            let tokensPerPass = Double(s.height * s.width) / p
            let inPasses = Measure.median(forwardTimes[i])
            // KV bytes: the largest the cache held during the images (compressed blocks + recent buffer).
            let cache = generators[i].cache(cfg: cfgScale > 1)
            let kvMB = Double(cache.peakBytes) / 1e6, ratio = Double(cache.fp16Bytes) / Double(cache.peakBytes)
            let bits = cache.formatBitsPerValue
            // The same schedule with the fp32 cache, if it ran: > 1 means this cache decodes faster
            // (median of the per-run ratios, like the speed-up).
            let fp32 = modeList.indices.first { modeList[$0].kv == .fp32 && modeList[$0].schedule == s && modeList[$0].adaptive == m.adaptive && modeList[$0].model == m.model }
            let vsFP32 = fp32.map { Measure.median(zip(times[$0], times[i]).map { $0 / $1 }) }
            var row: [String: Any] = ["scheme": models[m.model].label, "decoding": mode, "window": s.window, "kv_cache": modelOptions.kvName(m.kv), "kv_mb": kvMB, "x_smaller_than_fp16": ratio,
                                      "bits_per_value": bits, "passes": p, "tokens_per_pass": tokensPerPass,
                                      "seconds_per_image": t, "seconds_in_passes": inPasses, "ms_per_pass": inPasses / p * 1e3,
                                      "speedup": speed, "pass_saving": saving, "efficiency": speed / saving]
            if let vsFP32 { row["speed_vs_fp32_cache"] = vsFP32 }
            if let kept = cache.keptRatioPerLayer { row["zipvl_kept_per_layer"] = kept; zipvlLines.append((mode, s.window, m.kv, kept)) }
            modes.append(row)
            if !json {
                print("|" + (multi ? " \(models[m.model].label) |" : "") + String(format: " %@ | %d | %@ | %.1f | %.2fx | %@ | %.2f | %@ | %.0f | %.2f | %.2f | %.1f | %.2fx | %.2fx | %.2f |", mode, s.window,
                             modelOptions.kvName(m.kv), kvMB, ratio, bits > 0 ? String(format: "%.2f", bits) : "-", t, vsFP32.map { String(format: "%.2fx", $0) } ?? "-", p, tokensPerPass, inPasses,
                             inPasses / p * 1e3, speed, saving, speed / saving))
            }
        }
        report["images"] = modes
        if hwmReset, let peak = peakRSSMegabytes() {
            report["peak_rss_mb_images"] = peak
            if !json {
                print(String(format: "\npeak resident memory while generating: %.0f MB (weights %.0f MB fp32, every KV cache above, buffers)", peak,
                             Double(gpt.parameterCount) * 4 / 1e6))
            }
        }
        if !json && !zipvlLines.isEmpty {
            print(String(format: "\nZipVL (tau %.3f): fraction of tokens kept per layer", modelOptions.zipvlTau))
            for l in zipvlLines {
                print("  \(l.mode) window \(l.window) \(l.kv.rawValue): " + l.kept.map { String(format: "%.2f", $0) }.joined(separator: " "))
            }
        }

        // 3. The VQ decoder for one image of this grid.
        if let vq { try benchVQ(vq, side: side, randomInit: randomInit != nil, report: &report) }
        if json {
            let data = try JSONSerialization.data(withJSONObject: report, options: [.prettyPrinted, .sortedKeys])
            print(String(decoding: data, as: UTF8.self))
        }
    }

    /// One convolution at a time (random weights and input, the INT8 one at the abs-max range), fp32 and
    /// INT8 alternating, median of 5; the shapes of VQ-16's decoder at 256x256 and of the default model's.
    func runConvKernels() throws {
        var rng = RNG(seed: 1)
        func rand(_ shape: [Int], _ scale: Float) -> Tensor {
            let t = Tensor(shape: shape)
            for i in 0..<t.count { t.data[i] = scale * (2 * Float(rng.nextUniform()) - 1) }
            return t
        }
        print("shape (cout x cin x k, HxW)      fp32 ms   int8 ms   speed-up   int8 GOP/s")
        for (cout, cin, k, side) in [(128, 128, 3, 256), (128, 256, 3, 128), (256, 256, 3, 64), (512, 512, 3, 16), (128, 256, 1, 128), (64, 64, 3, 64), (3, 64, 3, 64)] {
            let w = rand([cout, cin, k, k], (3 / Float(cin * k * k)).squareRoot()), b = rand([cout], 0.01), x = rand([cin, side, side], 1)
            let (q, ws) = QuantizedConv.quantizeWeights(w)
            let (s, z) = QuantizedConv.activationCandidate(lo: -1, hi: 1, ratio: 1)
            let conv = Conv2D(weight: w, bias: b, quantized: try QuantizedConv(outChannels: cout, inChannels: cin, kernel: k, qweight: q, wscales: ws, inputScale: s, inputZero: z))
            let out = Tensor(shape: [cout, side, side]), scratch = ConvScratch()
            var tf: [Double] = [], tq: [Double] = []
            conv.applyFloat(x, into: out, scratch: scratch); conv.apply(x, into: out, scratch: scratch)
            for _ in 0..<5 {
                tf.append(Measure.time { conv.applyFloat(x, into: out, scratch: scratch) })
                tq.append(Measure.time { conv.apply(x, into: out, scratch: scratch) })
            }
            let f = Measure.median(tf), i8 = Measure.median(tq), ops = 2 * Double(cout * cin * k * k * side * side)
            print(String(format: "%4d x %4d x %d, %3dx%-3d          %8.2f  %8.2f   %6.2fx   %8.0f", cout, cin, k, side, side, f * 1e3, i8 * 1e3, f / i8, ops / i8 / 1e9))
        }
    }

    /// The VQ decoder on one side x side grid; with --vq-int8 also an INT8 copy (calibrated here on
    /// random codes), both timed alternately in this run, and the INT8 images' PSNR against fp32.
    func benchVQ(_ vq: VQDecoder, side: Int, randomInit: Bool, report: inout [String: Any]) throws {
        let codes = (0..<(side * side)).map { ($0 * 7919) % vq.config.codebook_size }
        let px = side * vq.config.downsample
        let gflop = VQDecoder.decodeFLOPs(config: vq.config, height: side, width: side) / 1e9
        guard vqInt8 else {
            _ = try vq.decode(codes: codes, height: side, width: side)     // warm-up
            var ts: [Double] = []
            for _ in 0..<max(1, min(runs, 3)) { ts.append(try Measure.time { _ = try vq.decode(codes: codes, height: side, width: side) }) }
            let t = Measure.median(ts)
            report["vq_decode_seconds"] = t; report["vq_decode_gflop"] = gflop
            if !json {
                print(String(format: "\nVQ decode %dx%d tokens -> %dx%d px: %.2f s (%.0f GFLOP, %.0f GFLOP/s)%@", side, side, px, px, t, gflop, gflop / t,
                             vq.isQuantized ? " [INT8 decoder]" : ""))
            }
            return
        }
        guard !vq.isQuantized else { throw ZipARError("--vq-int8 needs an fp32 VQ decoder; this one is already INT8 (time it without --vq-int8)") }
        // A second decoder with the same weights, quantized in memory.
        let int8 = randomInit ? VQDecoder.randomInit(config: vq.config, seed: 2) : try modelOptions.open().loadVQ()
        let cg = vqCalibGrid ?? (randomInit ? min(side, 4) : side)
        var rng = RNG(seed: 7)
        let grids = { (n: Int, g: Int) in (0..<n).map { _ in (0..<(g * g)).map { _ in Int(rng.next() % UInt64(vq.config.codebook_size)) } } }
        let t0 = Date()
        let layers = try DecoderQuantizer.quantize(int8, latents: grids(calib, cg), height: cg, width: cg)
        let calibSeconds = Date().timeIntervalSince(t0)
        let cmp = try DecoderQuantizer.compare(fp32: vq, int8: int8, latents: [codes] + grids(3, side), height: side, width: side, runs: max(3, runs))
        report["vq_decode_seconds"] = cmp.fp32Seconds; report["vq_decode_gflop"] = gflop
        report["vq_int8_decode_seconds"] = cmp.int8Seconds; report["vq_int8_psnr_db"] = cmp.psnrMean; report["vq_int8_psnr_min_db"] = cmp.psnrMin
        if !json {
            print(String(format: "\nVQ decode %dx%d tokens -> %dx%d px (%.0f GFLOP), median of %d alternating runs:", side, side, px, px, gflop, max(3, runs)))
            print(String(format: "  fp32  %8.1f ms  (%.0f GFLOP/s)", cmp.fp32Seconds * 1e3, gflop / cmp.fp32Seconds))
            print(String(format: "  int8  %8.1f ms  (%.0f GOP/s)  %.2fx; PSNR vs fp32 %.2f dB (min %.2f) on 4 random-code grids", cmp.int8Seconds * 1e3,
                         gflop / cmp.int8Seconds, cmp.speedup, cmp.psnrMean, cmp.psnrMin))
            print(String(format: "  (int8-mae: %d convs INT8, calibrated on %d random %dx%d grid(s) in %.0f s; random codes are off-domain for a trained decoder: `zipar quantize` reports PSNR on its own generated latents)",
                         layers.count, calib, cg, cg, calibSeconds))
        }
    }

    /// One decode pass per KV cache type over a cache filled to --kv-fill: 1 input and the widest
    /// window pass, CFG batch. The types alternate rep by rep so machine noise hits them alike.
    func runKVPasses(gpt: GPT, schedules: [Schedule]) throws {
        let caches = try kvCaches.map { try parseKVCaches($0, flag: "--kv-caches") } ?? [modelOptions.kvPrecision]
        let cfg = cfgScale > 1, wide = schedules.map { $0.maxTokensPerStep }.max() ?? 1
        let widths = wide > 1 ? [1, wide] : [1]
        var ms = [[[Double]]](repeating: [[Double]](repeating: [], count: widths.count), count: caches.count)
        for _ in 0..<max(3, runs) {
            for (i, kv) in caches.enumerated() {
                for (w, inputs) in widths.enumerated() {
                    ms[i][w].append(Measure.forwardPass(gpt: gpt, inputs: inputs, cfg: cfg, filled: kvFill, runs: 5,
                                                        kvPrecision: kv, kvOptions: modelOptions.kvOptions) * 1e3)
                }
            }
        }
        let slots = gpt.config.cls_token_num + Int(Double(gpt.config.block_size) * kvFill)
        print(String(format: "\nOne decode pass over %d written slots (fill %.2f), CFG %@, median of %d alternating reps of 5 passes", slots, kvFill,
                     cfg ? "on" : "off", max(3, runs)))
        print("\n| KV cache |" + widths.map { " ms/pass (\($0) input\($0 > 1 ? "s" : "")) | vs fp32 |" }.joined() + "\n|---|" + widths.map { _ in "---|---|" }.joined())
        let fp32 = caches.firstIndex(of: .fp32)
        for (i, kv) in caches.enumerated() {
            var line = "| \(modelOptions.kvName(kv)) |"
            for w in widths.indices {
                let t = Measure.median(ms[i][w])
                // Against fp32: the median of the per-rep ratios (each pair measured back to back).
                line += String(format: " %.1f |", t) + (fp32.map { String(format: " %.2fx |", Measure.median(zip(ms[$0][w], ms[i][w]).map { $0 / $1 })) } ?? " - |")
            }
            print(line)
        }
    }

    /// The skinny-product comparison of platform-notes section 7, on this machine, now.
    func runKernels() {
        if ck_has_avx2_fma() != 0 {
            print("AVX-512 kernels: \(ProcessInfo.processInfo.environment["ZIPAR_NO_AVX512"] == nil ? "on where the CPU has them" : "off (ZIPAR_NO_AVX512)")")
        }
        let bw = Measure.readBandwidth()
        let limit = 65536.0 * 768 * 4 / 1e6 / bw
        print(String(format: "x[M,768] · W[65536,768]ᵀ (201 MB fp32), %d threads; read bandwidth %.1f GB/s -> limit %.1f ms", Parallel.threads, bw, limit))
        let mb8 = 65536.0 * (768 + 4) / 1e6, mb4 = 65536.0 * (384 + 12 + 4) / 1e6, mb1 = 65536.0 * (96 + 8) / 1e6
        print(String(format: "integer kernels (%@): W8A8 %.1f MB -> limit %.1f ms, W4A8 (DGQ, group 128) %.1f MB -> limit %.1f ms, W1A8 %.1f MB (%@) -> limit %.1f ms",
                     ["portable C", "AVX2", "AVX-512 VNNI"][Int(ck_qkernel_level())], mb8, mb8 / bw, mb4, mb4 / bw, mb1,
                     ["portable popcount", "AVX2 byte masks", "AVX-512 VPOPCNTQ"][Int(ck_w1_path())], mb1 / bw))
        print("\n| M rows | zipar kernel ms | sgemm ms | M x sgemv ms | kernel x limit | sgemm / kernel | W8A8 ms | W8A8 x limit | W4A8 ms | W4A8 x limit | fp32 kernel / W4A8 | W1A8 ms | W1A8 x limit | fp32 kernel / W1A8 | W1A8 portable ms | portable / W1A8 |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        for r in Measure.skinnyProducts() {
            print(String(format: "| %d | %.1f | %.1f | %.1f | %.2f | %.2f | %.1f | %.2f | %.1f | %.2f | %.2f | %.2f | %.2f | %.2f | %.2f | %.2f |", r.rows, r.kernel, r.sgemm, r.sgemv, r.kernel / limit,
                         r.sgemm / r.kernel, r.w8, r.w8 / (mb8 / bw), r.w4, r.w4 / (mb4 / bw), r.kernel / r.w4, r.w1, r.w1 / (mb1 / bw), r.kernel / r.w1,
                         r.w1Portable, r.w1Portable / r.w1))
        }
        // Attention of a ZipAR pass: several queries per head over the same keys and values.
        let heads = 288, slots = 400, mb = Double(heads * slots * 64 * 4 * 2) / 1e6
        print(String(format: "\nattention (fp32 KV cache), 1 thread: 1-4 queries x %d heads of %d slots x 64 (%.0f MB of keys and values)", heads, slots, mb))
        print("\n| queries | ms | x 1 query |\n|---|---|---|")
        let att = Measure.attentionGroups(heads: heads, slots: slots)
        for a in att { print(String(format: "| %d | %.2f | %.2f |", a.queries, a.ms, a.ms / att[0].ms)) }
    }

    /// In-memory quantization for timing: DGQ calibrates on seeded random tokens with the bench's condition
    /// (a random model has no domain), searching on at most 64 tokens to keep the run short.
    func quantizeForBench(_ gpt: GPT, _ scheme: WeightScheme) throws {
        var settings = QuantizeSettings(scheme: scheme)
        settings.maxSearchTokens = 64
        var rng = RNG(seed: 7)
        let c = gpt.config
        let samples = (0..<calib).map { _ in
            CalibrationSample(condition: c.isT2I ? .caption(features: gpt.uncond_embedding!, mask: Array(repeating: true, count: c.cls_token_num)) : .classLabel(0),
                              tokens: (0..<c.block_size).map { _ in Int(rng.next() % UInt64(c.vocab_size)) })
        }
        try ModelQuantizer.quantize(gpt, settings: settings, samples: samples, log: json ? nil : { eprint($0) })
    }
}

/// "fp32,w8a8,w4a8-dgq,w1" -> schemes (a usage error names the bad entry).
func parseSchemes(_ text: String) throws -> [WeightScheme] {
    let parts = text.split(separator: ",").map { String($0).trimmingCharacters(in: .whitespaces) }
    guard !parts.isEmpty else { throw ValidationError("--schemes needs at least one of fp32, w8a8, w4a8-dgq, w1") }
    return try parts.map { p in
        guard let s = WeightScheme(rawValue: p) else { throw ValidationError("unknown weight scheme '\(p)': choose fp32, w8a8, w4a8-dgq or w1") }
        return s
    }
}

/// Resets the kernel's peak-RSS mark of this process (Linux /proc/self/clear_refs "5").
func resetPeakRSS() -> Bool {
    guard let f = FileHandle(forWritingAtPath: "/proc/self/clear_refs") else { return false }
    defer { try? f.close() }
    do { try f.write(contentsOf: Data("5".utf8)) } catch { return false }
    return true
}

/// VmHWM of this process in MB (peak resident memory since start or the last reset).
func peakRSSMegabytes() -> Double? {
    guard let text = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8),
          let line = text.split(separator: "\n").first(where: { $0.hasPrefix("VmHWM:") }),
          let kb = Double(line.split(separator: " ").dropFirst().first { !$0.isEmpty }.map(String.init) ?? "") else { return nil }
    return kb / 1024 * 1.048576
}
