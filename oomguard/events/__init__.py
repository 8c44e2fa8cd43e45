"""Event sources for the supervisor's single epoll loop. Each owns its fd and closes it.

- `loop.Loop`: the epoll instance (fd -> handler, sd_event style).
- `pidfd`: a service's exit (EPOLLIN when it becomes a zombie).
- `signals.SignalQueue`: SIGTERM/SIGINT/SIGHUP/SIGCHLD/SIGQUIT as bytes on a socket.
- `inotify.InotifyWatcher`: memory.events(.local) / cgroup.events changes (diff, never count).
- `psi.PsiWatch`: an armed memory pressure trigger (EPOLLPRI only; EPOLLERR = cgroup removed).

Importing this package imports none of them: the CLI's inspection commands never need them.
"""
