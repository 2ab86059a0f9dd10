import Foundation
import Glibc
import WBCore

/// A campaign submitted to Slurm (`wb fuzz --slurm N`): an sbatch job array of N tasks, each
/// restoring the image on its node and fuzzing as instance wb-K of one sync directory on a
/// file system the nodes share.
public struct SlurmSubmission {
    public var workers: Int
    public var partition: String?
    public var time: String?
    /// CPUs each task asks for (its --jobs).
    public var cpusPerTask = 1
    /// The sync directory (absolute).
    public var out: String
    /// wb and the arguments of each task's `wb fuzz`, without the instance name and seed.
    public var command: [String]
    public var seed: UInt64

    public init(workers: Int, out: String, command: [String], seed: UInt64) {
        self.workers = workers; self.out = out; self.command = command; self.seed = seed
    }

    /// The batch script: one array task per worker, instance wb-$SLURM_ARRAY_TASK_ID, each
    /// with a seed of its own.
    public var script: String {
        func quoted(_ s: String) -> String { "'" + s.replacingOccurrences(of: "'", with: "'\\''") + "'" }
        var lines = ["#!/bin/bash",
                     "#SBATCH --job-name=wb-fuzz",
                     "#SBATCH --array=0-\(workers - 1)",
                     "#SBATCH --cpus-per-task=\(cpusPerTask)",
                     "#SBATCH --output=\(out)/.wb/slurm-%A_%a.log"]
        if let partition { lines.append("#SBATCH --partition=\(partition)") }
        if let time { lines.append("#SBATCH --time=\(time)") }
        lines += ["# A wb fuzz campaign: task K fuzzes as instance wb-K of \(out).",
                  "exec " + command.map(quoted).joined(separator: " ")
                    + " --sync-name \"wb-$SLURM_ARRAY_TASK_ID\" --seed $((\(seed % (1 << 40)) + SLURM_ARRAY_TASK_ID))"]
        return lines.joined(separator: "\n") + "\n"
    }

    /// Makes the sync directory, writes the script there and submits it; the job's id.
    public func submit() throws -> String {
        guard let sbatch = Subprocess.find("sbatch") else {
            throw WBError.invalidArgument("--slurm: sbatch is not on PATH (run on a node that submits jobs, with Slurm's client tools)")
        }
        try Paths.makeDirectories("\(out)/.wb")
        let path = "\(out)/.wb/slurm.sh"
        try OutputDirectory.write(Array(script.utf8), to: path, replacing: true)
        var args = ["--parsable"]
        if let partition { args.append("--partition=\(partition)") }
        args.append(path)
        let result = try Subprocess.output(sbatch, args)
        let answer = String(decoding: result.stdout, as: UTF8.self).trimming(" \n")
        guard result.status == 0, let id = answer.split(separator: ";").first, !id.isEmpty else {
            let why = String(decoding: result.stderr, as: UTF8.self).split(separator: "\n").last.map(String.init) ?? "exit status \(result.status)"
            throw WBError.failed("--slurm: sbatch refused the job: \(why)")
        }
        return String(id)
    }
}
