import ArgumentParser
import WBCore

@main
struct WB: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "wb",
        abstract: "Checkpoint a live Linux process, restore it anywhere, and work on the restored copy.",
        discussion: """
        A checkpoint is one image file holding a process's memory, threads, registers, open files, \
        signal state and the executables and libraries it had mapped. Restoring it brings the \
        process back with its original pid, exactly where it was.

        Examples:
          wb checkpoint 4242 -o server.wbimg            # image of a running process; it keeps running
          wb checkpoint 4242 -o server.wbimg --kill     # ... and end it once the image is safe
          wb inspect server.wbimg                       # threads, registers, memory, files, signals
          wb restore server.wbimg                       # bring it back in the foreground
          wb restore server.wbimg --detach              # ... in the background; prints its pid
          wb run --portable -- ./server                 # start a program whose checkpoints restore on any x86-64
          wb restore server.wbimg --debug               # hand the restored process to gdb
          wb fuzz parser.wbimg --corpus seeds --out findings   # fuzz from the snapshot
          wb replay findings/crashes/BUCKET --debug     # run a crash again, stopped in gdb
          wb run --timeline job.tl --every 30s -- ./simulate   # checkpoints on a schedule
          wb bisect job.tl --gdb-check 'books.sum == books.expected'   # last good moment
          wb run --timeline srv.tl --record -- ./server   # ... logging what it reads
          wb replay srv.tl --debug                      # its crash again, in gdb
          wb coordinator --listen 10.0.0.1:7717         # a distributed job's coordinator
          wb agent --join 10.0.0.1:7717 --pid 4242      # add a host's processes to the job
          wb checkpoint --coordinator 10.0.0.1:7717 -o set1   # the whole job, consistently
          wb restore set1                               # the whole job, on this one box
          wb explore set1 --out found                   # its message orders, model-checked

        See docs/ for the image format and how restore works.
        """,
        version: WBVersion.string,
        subcommands: [CheckpointCommand.self, RestoreCommand.self, InspectCommand.self, RunCommand.self, TimelineCommand.self, BisectCommand.self, FuzzCommand.self, ReplayCommand.self,
                      CoordinatorCommand.self, AgentCommand.self, ExploreCommand.self])
}
