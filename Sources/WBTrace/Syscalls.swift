/// x86-64 system call numbers wb injects (arch/x86/entry/syscalls/syscall_64.tbl).
public enum SyscallNumber: Int64, Sendable {
    case read = 0, write = 1, close = 3, lseek = 8, mmap = 9, mprotect = 10, munmap = 11, brk = 12
    case rtSigaction = 13, rtSigprocmask = 14, mremap = 25, madvise = 28
    case dup2 = 33, getitimer = 36, setitimer = 38, getpid = 39, fcntl = 72, fchdir = 81
    case chdir = 80, umask = 95, getrlimit = 97, setresuid = 117, setresgid = 119, setgroups = 116
    case sigaltstack = 131, personality = 135, prctl = 157, archPrctl = 158, chroot = 161
    case gettid = 186, setTidAddress = 218, exitGroup = 231, tgkill = 234, openat = 257
    case rtTgsigqueueinfo = 297, pipe2 = 293, dup3 = 292, rtSigqueueinfo = 129
    case setRobustList = 273, memfdCreate = 319, rseq = 334, clone3 = 435, closeRange = 436
    case ioctl = 16, timerCreate = 222, timerSettime = 223, timerGettime = 224, timerDelete = 226
    case epollCtl = 233, timerfdCreate = 283, timerfdSettime = 286, signalfd4 = 289, eventfd2 = 290
    case epollCreate1 = 291, userfaultfd = 323, seccomp = 317
    case capget = 125, capset = 126, setfsuid = 122, setfsgid = 123, mlock2 = 325, mlockall = 151, mknodat = 259, mkdirat = 258, unlinkat = 263, flock = 73, fchmod = 91, fchown = 93, openat2 = 437
    case sendto = 44, recvmsg = 47, socketpair = 53, kill = 62, setpgid = 109, setsid = 112, pidfdOpen = 434, pidfdGetfd = 438
    case shmget = 29, shmat = 30, shmctl = 31, unshare = 272, socket = 41, bind = 49, listen = 50, connect = 42, accept4 = 288
    case inotifyInit1 = 294, inotifyAddWatch = 254, inotifyRmWatch = 255, fanotifyInit = 300, fanotifyMark = 301, ioSetup = 206, ioDestroy = 207, uname = 63, sethostname = 170, setdomainname = 171
    case setns = 308, mqOpen = 240, mqUnlink = 241, mseal = 462
    case mbind = 237, setMempolicy = 238, getMempolicy = 239, clockGettime = 228, keyctl = 250
}
