#ifndef BULWARK_CFILESYNC_H
#define BULWARK_CFILESYNC_H

/// Starts writing `fd`'s dirty pages to the device and returns without waiting (Linux `sync_file_range` with
/// `SYNC_FILE_RANGE_WRITE` over the whole file): 0, or -1 with errno. It makes nothing durable; an `fsync` still
/// must. Elsewhere it does nothing and returns 0.
///
/// Started for several new files before the first is fsynced, their blocks are allocated together, so on a
/// journalling file system (ext4) the first fsync's commit carries them all.
int bulwark_start_writeback(int fd);

#endif
