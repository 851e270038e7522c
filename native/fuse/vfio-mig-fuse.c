/*
 * vfio-mig-fuse: serve VFIO migration data sessions as FUSE files with the data fd's semantics.
 *
 * The Node process that owns the device (the device host child) spawns this program with a private
 * mount point and talks to it over stdin (Node -> server) and stdout (server -> Node) with fixed
 * 24-byte little-endian headers (see docs/fuse.md and src/devices/fuse-bridge.ts):
 *
 *   struct msg { u32 op; u32 id; u32 sid; i32 arg; u32 len; u32 flags; } followed by `len` bytes.
 *
 * The server owns the kernel side only: directory, inodes, open modes, direct_io + nonseekable, poll
 * handles, interrupts. Every data decision (bytes, ENOMSG, ENODEV, 0, EAGAIN, blocking waits) is made
 * by Node, which answers each forwarded request by id. The server is single-threaded and never blocks
 * on a data request: read/write/poll requests are parked in a table and answered when Node's reply
 * arrives, so any number may be outstanding (a blocked reader does not stall another session, a
 * release or a poll) without threads or locks.
 */
#define FUSE_USE_VERSION 35
#define _GNU_SOURCE

#include <fuse_lowlevel.h>

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* Server -> Node. */
enum {
	OP_READ = 1,      /* sid, arg = max bytes, flags = file's open flags; reply: arg = n or -errno, data */
	OP_WRITE = 2,     /* sid, len bytes of data follow; reply: arg = bytes accepted or -errno */
	OP_POLL = 3,      /* sid, flags = 1 when the kernel wants a wake-up; reply: arg = poll mask or -errno */
	OP_INTERRUPT = 4, /* id = the interrupted request; no reply (Node answers that request early) */
	OP_OPENED = 5,    /* event: sid, flags = open flags */
	OP_RELEASED = 6,  /* event: sid */
	OP_ACK = 7,       /* answer to a control message: id, arg = 0 or -errno */
	OP_READY = 8,     /* mounted; arg = 0 */
};

/* Node -> server. */
enum {
	OP_REPLY = 0x80,  /* id, arg, len bytes of data */
	OP_ADD = 0x81,    /* id, sid, flags = KIND_*, data = file name */
	OP_REMOVE = 0x82, /* id, sid: drop the name; open files keep working (Node answers ENODEV) */
	OP_WAKE = 0x83,   /* sid: readiness changed, wake pollers */
	OP_EXIT = 0x84,   /* unmount and exit */
};

enum { KIND_SAVING = 1, KIND_RESUMING = 2 };

#define HDR_SIZE 24
#define MAX_IO (1024 * 1024)
#define MAX_NAME 255

struct msg {
	uint32_t op, id, sid;
	int32_t arg;
	uint32_t len, flags;
};

struct node {
	struct node *next;
	fuse_ino_t ino;
	uint32_t sid;
	int kind;
	int linked;        /* has a name in the directory */
	uint64_t nlookup;  /* kernel references (lookup count) */
	unsigned opens;
	char name[MAX_NAME + 1];
};

/* One open file; holds the latest poll handle the kernel gave for it. */
struct file {
	struct node *node;
	struct fuse_pollhandle *ph;
	struct file *next_open; /* in the node's list, for WAKE */
};

struct pending {
	struct pending *next;
	uint32_t id;
	uint32_t op;
	fuse_req_t req;
	size_t max; /* READ: the most bytes the kernel asked for */
};

static struct fuse_session *se;
static struct node *nodes;
static struct file *files; /* all open files (a short list: one or two per session) */
static struct pending *pendings;
static uint32_t next_id = 1;
static int in_fd = 0, out_fd = 1;
static volatile sig_atomic_t quit_flag;
static int sig_pipe[2] = { -1, -1 };
static struct timespec start_time;
static char *io_buf;
static int debug;

#define LOG(...) do { fprintf(stderr, "vfio-mig-fuse: " __VA_ARGS__); fputc('\n', stderr); } while (0)
#define DBG(...) do { if (debug) LOG(__VA_ARGS__); } while (0)

static void put32(unsigned char *p, uint32_t v)
{
	p[0] = v; p[1] = v >> 8; p[2] = v >> 16; p[3] = v >> 24;
}

static uint32_t get32(const unsigned char *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* Blocking write of header + payload; Node always drains its end, so this never waits long. */
static void send_msg(uint32_t op, uint32_t id, uint32_t sid, int32_t arg, uint32_t flags,
		     const void *data, size_t len)
{
	unsigned char h[HDR_SIZE];
	struct iovec iov[2];
	int n = 1;
	put32(h, op); put32(h + 4, id); put32(h + 8, sid); put32(h + 12, (uint32_t)arg);
	put32(h + 16, (uint32_t)len); put32(h + 20, flags);
	iov[0].iov_base = h; iov[0].iov_len = HDR_SIZE;
	if (len) { iov[1].iov_base = (void *)data; iov[1].iov_len = len; n = 2; }
	while (n > 0) {
		ssize_t w = writev(out_fd, iov, n);
		if (w < 0) {
			if (errno == EINTR) continue;
			/* Node is gone: nobody can answer requests any more, so unmount. */
			LOG("write to node failed: %s", strerror(errno));
			quit_flag = 1;
			return;
		}
		while (n > 0 && (size_t)w >= iov[0].iov_len) {
			w -= iov[0].iov_len;
			iov[0] = iov[1];
			n--;
		}
		if (n > 0) { iov[0].iov_base = (char *)iov[0].iov_base + w; iov[0].iov_len -= w; }
	}
}

/* Read exactly len bytes from Node; 0 on EOF or error. */
static int read_full(void *buf, size_t len)
{
	char *p = buf;
	while (len > 0) {
		ssize_t r = read(in_fd, p, len);
		if (r < 0 && errno == EINTR) continue;
		if (r <= 0) return 0;
		p += r;
		len -= r;
	}
	return 1;
}

static struct node *node_by_ino(fuse_ino_t ino)
{
	for (struct node *n = nodes; n; n = n->next)
		if (n->ino == ino) return n;
	return NULL;
}

static struct node *node_by_sid(uint32_t sid)
{
	for (struct node *n = nodes; n; n = n->next)
		if (n->sid == sid) return n;
	return NULL;
}

static struct node *node_by_name(const char *name)
{
	for (struct node *n = nodes; n; n = n->next)
		if (n->linked && strcmp(n->name, name) == 0) return n;
	return NULL;
}

/* A node lives while it has a name, a kernel reference or an open file. */
static void node_maybe_free(struct node *node)
{
	if (node->linked || node->nlookup || node->opens) return;
	for (struct node **pp = &nodes; *pp; pp = &(*pp)->next) {
		if (*pp == node) {
			*pp = node->next;
			free(node);
			return;
		}
	}
}

static void fill_stat(fuse_ino_t ino, struct stat *st)
{
	memset(st, 0, sizeof(*st));
	st->st_ino = ino;
	st->st_uid = getuid();
	st->st_gid = getgid();
	st->st_atim = st->st_mtim = st->st_ctim = start_time;
	if (ino == FUSE_ROOT_ID) {
		st->st_mode = S_IFDIR | 0500;
		st->st_nlink = 2;
		return;
	}
	struct node *n = node_by_ino(ino);
	/* The kernel's data fds: the saving one read-only, the resuming one write-only. */
	st->st_mode = S_IFREG | (n && n->kind == KIND_SAVING ? 0400 : 0200);
	st->st_nlink = n && n->linked ? 1 : 0;
	st->st_size = 0;
	st->st_blksize = MAX_IO;
}

static struct pending *pending_add(uint32_t op, fuse_req_t req, size_t max)
{
	struct pending *p = calloc(1, sizeof(*p));
	if (!p) return NULL;
	p->id = next_id++;
	if (next_id == 0) next_id = 1;
	p->op = op;
	p->req = req;
	p->max = max;
	p->next = pendings;
	pendings = p;
	return p;
}

static struct pending *pending_take(uint32_t id)
{
	for (struct pending **pp = &pendings; *pp; pp = &(*pp)->next) {
		if ((*pp)->id == id) {
			struct pending *p = *pp;
			*pp = p->next;
			return p;
		}
	}
	return NULL;
}

/* The reader got a signal: let Node end a blocking wait early. The request is answered only once,
 * when Node replies (EINTR if it was still waiting, else its normal result). */
static void on_interrupt(fuse_req_t req, void *data)
{
	(void)req;
	send_msg(OP_INTERRUPT, (uint32_t)(uintptr_t)data, 0, 0, 0, NULL, 0);
}

static void forward(fuse_req_t req, uint32_t op, uint32_t sid, int32_t arg, uint32_t flags,
		    const void *data, size_t len, size_t max)
{
	struct pending *p = pending_add(op, req, max);
	if (!p) { fuse_reply_err(req, ENOMEM); return; }
	send_msg(op, p->id, sid, arg, flags, data, len);
	fuse_req_interrupt_func(req, on_interrupt, (void *)(uintptr_t)p->id);
}

static void ll_init(void *userdata, struct fuse_conn_info *conn)
{
	(void)userdata;
	/* One request per 1 MiB read/write (kernel max_pages = 256). */
	conn->max_write = MAX_IO;
	/* A stream must not be split into parallel requests: the server serves bytes in arrival
	 * order, and a short first part followed by a full second part would reorder the stream. */
	conn->want &= ~(FUSE_CAP_ASYNC_DIO | FUSE_CAP_ASYNC_READ | FUSE_CAP_WRITEBACK_CACHE |
			FUSE_CAP_SPLICE_READ | FUSE_CAP_SPLICE_WRITE | FUSE_CAP_SPLICE_MOVE);
	conn->max_background = 16;
}

static void ll_lookup(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	struct fuse_entry_param e;
	struct node *n = parent == FUSE_ROOT_ID ? node_by_name(name) : NULL;
	if (!n) { fuse_reply_err(req, ENOENT); return; }
	memset(&e, 0, sizeof(e));
	e.ino = n->ino;
	/* No caching: names come and go with sessions. */
	e.attr_timeout = 0;
	e.entry_timeout = 0;
	fill_stat(n->ino, &e.attr);
	n->nlookup++;
	fuse_reply_entry(req, &e);
}

static void ll_forget(fuse_req_t req, fuse_ino_t ino, uint64_t nlookup)
{
	struct node *n = node_by_ino(ino);
	if (n) {
		n->nlookup = n->nlookup > nlookup ? n->nlookup - nlookup : 0;
		node_maybe_free(n);
	}
	fuse_reply_none(req);
}

static void ll_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct stat st;
	(void)fi;
	if (ino != FUSE_ROOT_ID && !node_by_ino(ino)) { fuse_reply_err(req, ENOENT); return; }
	fill_stat(ino, &st);
	fuse_reply_attr(req, &st, 0);
}

/* Only open(O_TRUNC) on the resuming file reaches here with a size: accept it as a no-op so that
 * fs.open(path, 'w') works; a data fd has no size to change. */
static void ll_setattr(fuse_req_t req, fuse_ino_t ino, struct stat *attr, int to_set,
		       struct fuse_file_info *fi)
{
	struct stat st;
	struct node *n = node_by_ino(ino);
	(void)fi;
	if (!n) { fuse_reply_err(req, ENOENT); return; }
	if ((to_set & ~(FUSE_SET_ATTR_SIZE | FUSE_SET_ATTR_ATIME | FUSE_SET_ATTR_MTIME |
			FUSE_SET_ATTR_ATIME_NOW | FUSE_SET_ATTR_MTIME_NOW | FUSE_SET_ATTR_CTIME)) ||
	    ((to_set & FUSE_SET_ATTR_SIZE) && (attr->st_size != 0 || n->kind != KIND_RESUMING))) {
		fuse_reply_err(req, EPERM);
		return;
	}
	fill_stat(ino, &st);
	fuse_reply_attr(req, &st, 0);
}

static void ll_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct node *n = node_by_ino(ino);
	int acc = fi->flags & O_ACCMODE;
	if (!n) { fuse_reply_err(req, ENOENT); return; }
	/* Kernel: the saving fd is O_RDONLY, the resuming fd O_WRONLY; any other mode is refused here
	 * (root bypasses mode bits), so a write on a saving fd or a read on a resuming fd is EBADF. */
	if ((n->kind == KIND_SAVING && acc != O_RDONLY) || (n->kind == KIND_RESUMING && acc != O_WRONLY)) {
		fuse_reply_err(req, EACCES);
		return;
	}
	struct file *f = calloc(1, sizeof(*f));
	if (!f) { fuse_reply_err(req, ENOMEM); return; }
	f->node = n;
	f->next_open = files;
	files = f;
	n->opens++;
	fi->fh = (uint64_t)(uintptr_t)f;
	/* stream_open(): no page cache, no positions (pread/pwrite/lseek give ESPIPE). */
	fi->direct_io = 1;
	fi->nonseekable = 1;
	fi->keep_cache = 0;
	if (fuse_reply_open(req, fi) == 0) {
		send_msg(OP_OPENED, 0, n->sid, 0, (uint32_t)fi->flags, NULL, 0);
	} else {
		/* The opener is gone (interrupted); no release will come. */
		files = f->next_open;
		n->opens--;
		free(f);
	}
}

static void ll_release(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct file *f = (struct file *)(uintptr_t)fi->fh;
	(void)ino;
	for (struct file **pp = &files; *pp; pp = &(*pp)->next_open) {
		if (*pp == f) { *pp = f->next_open; break; }
	}
	if (f->ph) fuse_pollhandle_destroy(f->ph);
	struct node *n = f->node;
	free(f);
	n->opens--;
	send_msg(OP_RELEASED, 0, n->sid, 0, 0, NULL, 0);
	fuse_reply_err(req, 0);
	node_maybe_free(n);
}

static void ll_flush(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	(void)ino; (void)fi;
	fuse_reply_err(req, 0);
}

static void ll_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi)
{
	struct file *f = (struct file *)(uintptr_t)fi->fh;
	(void)ino; (void)off; /* the session keeps its own cursor; the kernel offset means nothing */
	if (size > MAX_IO) size = MAX_IO;
	forward(req, OP_READ, f->node->sid, (int32_t)size, (uint32_t)fi->flags, NULL, 0, size);
}

static void ll_write(fuse_req_t req, fuse_ino_t ino, const char *buf, size_t size, off_t off,
		     struct fuse_file_info *fi)
{
	struct file *f = (struct file *)(uintptr_t)fi->fh;
	(void)ino; (void)off;
	/* The request buffer is reused by the next receive, so the data goes to Node now. */
	forward(req, OP_WRITE, f->node->sid, 0, (uint32_t)fi->flags, buf, size, size);
}

static void ll_poll(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi, struct fuse_pollhandle *ph)
{
	struct file *f = (struct file *)(uintptr_t)fi->fh;
	(void)ino;
	if (ph) {
		/* One handle per open file: the kernel's newest replaces the old. */
		if (f->ph) fuse_pollhandle_destroy(f->ph);
		f->ph = ph;
	}
	forward(req, OP_POLL, f->node->sid, 0, ph ? 1 : 0, NULL, 0, 0);
}

static void ll_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi)
{
	(void)fi;
	if (ino != FUSE_ROOT_ID) { fuse_reply_err(req, ENOTDIR); return; }
	char *buf = malloc(size);
	if (!buf) { fuse_reply_err(req, ENOMEM); return; }
	size_t used = 0;
	off_t idx = 0;
	struct stat st;
	memset(&st, 0, sizeof(st));
	/* Entry i is at offset i + 1; "." and ".." first, then the linked sessions in list order. */
	const char *dots[2] = { ".", ".." };
	for (int i = 0; i < 2; i++, idx++) {
		if (idx < off) continue;
		st.st_ino = FUSE_ROOT_ID;
		st.st_mode = S_IFDIR;
		size_t need = fuse_add_direntry(req, buf + used, size - used, dots[i], &st, idx + 1);
		if (need > size - used) goto done;
		used += need;
	}
	for (struct node *n = nodes; n; n = n->next) {
		if (!n->linked) continue;
		if (idx++ < off) continue;
		st.st_ino = n->ino;
		st.st_mode = S_IFREG;
		size_t need = fuse_add_direntry(req, buf + used, size - used, n->name, &st, idx);
		if (need > size - used) goto done;
		used += need;
	}
done:
	fuse_reply_buf(req, buf, used);
	free(buf);
}

static const struct fuse_lowlevel_ops ops = {
	.init = ll_init,
	.lookup = ll_lookup,
	.forget = ll_forget,
	.getattr = ll_getattr,
	.setattr = ll_setattr,
	.open = ll_open,
	.release = ll_release,
	.flush = ll_flush,
	.read = ll_read,
	.write = ll_write,
	.poll = ll_poll,
	.readdir = ll_readdir,
};

static void handle_reply(const struct msg *m, const char *data)
{
	struct pending *p = pending_take(m->id);
	if (!p) { LOG("reply for unknown request %u", m->id); return; }
	fuse_req_interrupt_func(p->req, NULL, NULL);
	if (m->arg < 0) {
		fuse_reply_err(p->req, -m->arg);
	} else if (p->op == OP_READ) {
		if (m->len > p->max || (int32_t)m->len != m->arg) fuse_reply_err(p->req, EIO);
		else fuse_reply_buf(p->req, data, m->len);
	} else if (p->op == OP_WRITE) {
		if ((size_t)m->arg > p->max) fuse_reply_err(p->req, EIO);
		else fuse_reply_write(p->req, (size_t)m->arg);
	} else {
		fuse_reply_poll(p->req, (unsigned)m->arg);
	}
	free(p);
}

static int handle_add(const struct msg *m, const char *data)
{
	char name[MAX_NAME + 1];
	if (m->len == 0 || m->len > MAX_NAME || (m->flags != KIND_SAVING && m->flags != KIND_RESUMING) || m->sid == 0)
		return -EINVAL;
	memcpy(name, data, m->len);
	name[m->len] = 0;
	if (strchr(name, '/') || strlen(name) != m->len || !strcmp(name, ".") || !strcmp(name, ".."))
		return -EINVAL;
	if (node_by_name(name) || node_by_sid(m->sid)) return -EEXIST;
	struct node *n = calloc(1, sizeof(*n));
	if (!n) return -ENOMEM;
	n->sid = m->sid;
	n->ino = (fuse_ino_t)m->sid + FUSE_ROOT_ID; /* Node never reuses a sid, so never an inode */
	n->kind = (int)m->flags;
	n->linked = 1;
	memcpy(n->name, name, m->len + 1);
	n->next = nodes;
	nodes = n;
	return 0;
}

static int handle_remove(const struct msg *m)
{
	struct node *n = node_by_sid(m->sid);
	if (!n || !n->linked) return -ENOENT;
	n->linked = 0;
	/* Drop any dentry the kernel still holds so the name disappears at once. */
	fuse_lowlevel_notify_inval_entry(se, FUSE_ROOT_ID, n->name, strlen(n->name));
	node_maybe_free(n);
	return 0;
}

static void handle_wake(uint32_t sid)
{
	for (struct file *f = files; f; f = f->next_open) {
		if (f->node->sid == sid && f->ph) {
			fuse_lowlevel_notify_poll(f->ph);
			fuse_pollhandle_destroy(f->ph);
			f->ph = NULL;
		}
	}
}

/* One message from Node; 0 when Node closed the pipe or broke the protocol. */
static int handle_node_message(void)
{
	unsigned char h[HDR_SIZE];
	struct msg m;
	if (!read_full(h, HDR_SIZE)) return 0;
	m.op = get32(h); m.id = get32(h + 4); m.sid = get32(h + 8); m.arg = (int32_t)get32(h + 12);
	m.len = get32(h + 16); m.flags = get32(h + 20);
	if (m.len > MAX_IO) { LOG("message too long (%u bytes)", m.len); return 0; }
	if (m.len && !read_full(io_buf, m.len)) return 0;
	switch (m.op) {
	case OP_REPLY: handle_reply(&m, io_buf); break;
	case OP_ADD: send_msg(OP_ACK, m.id, m.sid, handle_add(&m, io_buf), 0, NULL, 0); break;
	case OP_REMOVE: send_msg(OP_ACK, m.id, m.sid, handle_remove(&m), 0, NULL, 0); break;
	case OP_WAKE: handle_wake(m.sid); break;
	case OP_EXIT: return 0;
	default: LOG("unknown op 0x%x", m.op); return 0;
	}
	return 1;
}

static volatile sig_atomic_t quit_signal;

static void on_signal(int sig)
{
	quit_signal = sig;
	quit_flag = 1;
	if (sig_pipe[1] >= 0) { int e = errno; (void)!write(sig_pipe[1], "x", 1); errno = e; }
}

/*
 * auto_unmount's fusermount3 watchdog is our child and holds a socket that libfuse keeps open in
 * this process until exit. Close our descriptors so it sees the end now, then reap it (bounded):
 * left to exit after us, it would be reparented to a pid 1 that may never reap it.
 */
static void reap_watchdog(void)
{
	for (int fd = 3; fd < 1024; fd++) (void)close(fd);
	for (int i = 0; i < 200; i++) {
		pid_t p = waitpid(-1, NULL, WNOHANG);
		if (p < 0) return; /* no children left */
		if (p == 0) {
			struct timespec ts = { 0, 5 * 1000 * 1000 };
			nanosleep(&ts, NULL);
		}
	}
}

/* Bigger pipe/socket buffers: a 1 MiB reply then passes in a few system calls. */
static void grow_buffer(int fd, int is_input)
{
	if (fcntl(fd, F_SETPIPE_SZ, MAX_IO) >= 0) return;
	int sz = 2 * MAX_IO;
	(void)setsockopt(fd, SOL_SOCKET, is_input ? SO_RCVBUF : SO_SNDBUF, &sz, sizeof(sz));
}

int main(int argc, char **argv)
{
	const char *mountpoint = NULL;
	int auto_unmount = 1, remove_dir = 0;
	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "-d")) debug = 1;
		else if (!strcmp(argv[i], "--no-auto-unmount")) auto_unmount = 0;
		else if (!strcmp(argv[i], "--rmdir")) remove_dir = 1;
		else if (argv[i][0] != '-' && !mountpoint) mountpoint = argv[i];
		else { LOG("usage: %s [-d] [--no-auto-unmount] [--rmdir] MOUNTPOINT", argv[0]); return 2; }
	}
	if (!mountpoint) { LOG("usage: %s [-d] [--no-auto-unmount] [--rmdir] MOUNTPOINT", argv[0]); return 2; }

	/* The owner dying must unmount us: SIGTERM on parent death, and EOF on stdin below. */
	pid_t parent = getppid();
	prctl(PR_SET_PDEATHSIG, SIGTERM);
	if (getppid() != parent) return 1;

	clock_gettime(CLOCK_REALTIME, &start_time);
	io_buf = malloc(MAX_IO);
	if (!io_buf || pipe2(sig_pipe, O_CLOEXEC | O_NONBLOCK) < 0) { LOG("out of resources"); return 1; }
	struct sigaction sa;
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_signal; /* no SA_RESTART: poll() must return */
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGHUP, &sa, NULL);
	signal(SIGPIPE, SIG_IGN);
	grow_buffer(in_fd, 1);
	grow_buffer(out_fd, 0);

	/* auto_unmount leaves a fusermount3 watchdog that unmounts even if this process is killed. */
	char *fargv[6];
	int fargc = 0;
	fargv[fargc++] = argv[0];
	fargv[fargc++] = "-o";
	fargv[fargc++] = auto_unmount ? "fsname=vfio-mig,subtype=vfio-mig,auto_unmount" : "fsname=vfio-mig,subtype=vfio-mig";
	if (debug) fargv[fargc++] = "-d";
	fargv[fargc] = NULL;
	struct fuse_args args = FUSE_ARGS_INIT(fargc, fargv);
	se = fuse_session_new(&args, &ops, sizeof(ops), NULL);
	if (!se) { LOG("fuse_session_new failed"); send_msg(OP_READY, 0, 0, -EINVAL, 0, NULL, 0); return 1; }
	if (fuse_session_mount(se, mountpoint) != 0) {
		LOG("mount on %s failed", mountpoint);
		send_msg(OP_READY, 0, 0, -EIO, 0, NULL, 0);
		fuse_session_destroy(se);
		return 1;
	}
	int ffd = fuse_session_fd(se);
	/* Poll says readable, but a request can vanish (interrupted) before we read it. */
	fcntl(ffd, F_SETFL, fcntl(ffd, F_GETFL) | O_NONBLOCK);
	send_msg(OP_READY, 0, 0, 0, 0, NULL, 0);

	struct fuse_buf fbuf;
	memset(&fbuf, 0, sizeof(fbuf));
	struct pollfd pfd[3] = {
		{ .fd = ffd, .events = POLLIN },
		{ .fd = in_fd, .events = POLLIN },
		{ .fd = sig_pipe[0], .events = POLLIN },
	};
	int rc = 0;
	while (!quit_flag && !fuse_session_exited(se)) {
		if (poll(pfd, 3, -1) < 0) {
			if (errno == EINTR) continue;
			LOG("poll: %s", strerror(errno));
			rc = 1;
			break;
		}
		if (pfd[2].revents) { DBG("signal %d", (int)quit_signal); break; }
		if (pfd[1].revents & (POLLIN | POLLHUP | POLLERR)) {
			if (!handle_node_message()) { DBG("node closed the pipe or asked to exit"); break; }
		}
		if (pfd[0].revents & POLLIN) {
			int res = fuse_session_receive_buf(se, &fbuf);
			if (res == -EINTR || res == -EAGAIN || res == -ENOENT) continue;
			if (res <= 0) { if (res < 0) { LOG("receive: %s", strerror(-res)); rc = 1; } break; }
			fuse_session_process_buf(se, &fbuf);
		} else if (pfd[0].revents & (POLLERR | POLLHUP)) {
			DBG("unmounted from outside");
			break;
		}
	}
	DBG("exiting");
	/* Outstanding requests die with the connection: readers get ENOTCONN/EIO, never a hang. */
	fuse_session_unmount(se);
	fuse_session_destroy(se);
	free(fbuf.mem);
	/* The private mount directory goes with us, even when our owner died first. */
	if (remove_dir) (void)rmdir(mountpoint);
	reap_watchdog();
	return rc;
}
