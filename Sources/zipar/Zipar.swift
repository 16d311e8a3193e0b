import ArgumentParser
import Foundation
import ZipARCore

struct Zipar: ParsableCommand {
    static let version = "0.1.0"
    static let configuration = CommandConfiguration(
        commandName: "zipar",
        abstract: "Autoregressive VQ-token image generation on the CPU, with ZipAR next-set decoding.",
        version: version,
        subcommands: [GenerateCommand.self, DecodeCommand.self, InfoCommand.self, ScheduleCommand.self, BenchCommand.self, GridCommand.self, EvalCommand.self, QuantizeCommand.self]
    )
}

/// Entry point: one clear message per failure. Runtime failures (bad files, unwritable paths) exit 1,
/// usage errors (bad flags or values) exit 2, --help and --version exit 0.
@main
enum Main {
    static func main() {
        do {
            var command = try Zipar.parseAsRoot()
            try command.run()
        } catch let error as ZipARError {
            eprint("error: \(error.message)")
            exit(1)
        } catch let code as ExitCode {
            exit(code.rawValue)
        } catch {
            if Zipar.exitCode(for: error) == .success {
                print(Zipar.fullMessage(for: error))
                exit(0)
            }
            eprint(Zipar.fullMessage(for: error))
            exit(2)
        }
    }
}
