import ArgumentParser
import ZipARCore

@main
struct Zipar: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "zipar",
        abstract: "Autoregressive VQ-token image generation on the CPU, with ZipAR next-set decoding.",
        subcommands: [ScheduleCommand.self]
    )
}
