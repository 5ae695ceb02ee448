//! Reconciliation as a pure function: what this device holds of one asset, and what the
//! feed says of it, decide what to do — nothing here reads the disk or the journal.
//! `Device::apply` gathers the inputs and carries the plan out.

use crate::cloud::RemoteState;

/// The asset's file in the folder, as the last scan left it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FileHere {
    /// No file of this asset here.
    Absent,
    /// The file is what the cloud last had from or gave to this device; `same`: its bytes
    /// are the feed's version.
    Synced { same: bool },
    /// The file holds an edit the cloud has not seen (or changed since the scan).
    Edited { same: bool },
}

/// This device's copy of the asset in its Recently Deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TrashHere {
    /// None.
    Absent,
    /// A record of one; `same`: the feed's version; `stored`: its file is still there.
    Kept { same: bool, stored: bool },
}

/// What the device holds of one asset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Here {
    /// Its file.
    pub file: FileHere,
    /// Its copy in Recently Deleted.
    pub trash: TrashHere,
    /// Kept in the cloud only (Optimize Storage, or not here by choice).
    pub cloud_only: bool,
}

/// What the feed says of the asset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct There {
    /// Live, in Recently Deleted, or purged.
    pub state: RemoteState,
    /// The cloud lost part of its content.
    pub damaged: bool,
    /// Its library path is one this device may write (`keepsake_path::check`).
    pub path_ok: bool,
}

/// What becomes of the copy in Recently Deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TrashStep {
    /// Left as it is.
    Leave,
    /// Its record and stored file removed.
    Discard,
    /// Moved back into the folder at the asset's path (the asset is live again with the
    /// same bytes): nothing is fetched.
    Restore,
}

/// What becomes of the file (or its cloud-only record).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FileStep {
    /// Nothing.
    Leave,
    /// The cloud lost content this file holds: mark it unsynced so it is sent again.
    Resend,
    /// Follow the cloud's version in the cloud-only record; fetch nothing.
    FollowCloudOnly,
    /// Drop the cloud-only record (trashed or purged elsewhere).
    ForgetCloudOnly,
    /// The path could lead out of the folder: refuse it, write nothing.
    RefusePath,
    /// Same bytes: follow a rename made elsewhere and note the version.
    Keep,
    /// A local edit the cloud has not seen: the cloud's version arrives beside it.
    DownloadBeside,
    /// An older synced version: follow a rename, then write the new version over it.
    Replace,
    /// Nothing of it here: place it (adopt a twin, keep it in the cloud, or fetch).
    Place,
    /// Move the file into Recently Deleted.
    MoveToTrash,
    /// Remove the file for good.
    Remove,
}

/// The plan for one asset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Plan {
    /// For the copy in Recently Deleted.
    pub trash: TrashStep,
    /// For the file.
    pub file: FileStep,
}

impl Plan {
    /// Whether carrying it out moves, writes or removes a file in the folder or in
    /// Recently Deleted (a rename under `Keep` and a fetch under `Place` are decided
    /// later, where they happen).
    pub(crate) fn moves_files(&self) -> bool {
        self.trash != TrashStep::Leave
            || matches!(
                self.file,
                FileStep::DownloadBeside
                    | FileStep::Replace
                    | FileStep::MoveToTrash
                    | FileStep::Remove
            )
    }

    fn only(file: FileStep) -> Self {
        Self {
            trash: TrashStep::Leave,
            file,
        }
    }
}

/// Decides what to do with one asset. A file holding an edit the cloud has not seen is
/// never overwritten, trashed or removed; nothing is written at a refused path.
pub(crate) fn reconcile(here: Here, there: There) -> Plan {
    use FileHere::{Absent, Edited, Synced};
    if there.damaged && here.file == (Synced { same: true }) {
        return Plan::only(FileStep::Resend);
    }
    if here.file == Absent && here.trash == TrashHere::Absent && here.cloud_only {
        return Plan::only(if there.state == RemoteState::Live {
            FileStep::FollowCloudOnly
        } else {
            FileStep::ForgetCloudOnly
        });
    }
    if there.state != RemoteState::Purged && !there.path_ok {
        return Plan::only(FileStep::RefusePath);
    }
    match there.state {
        RemoteState::Live => {
            if let TrashHere::Kept { same, stored } = here.trash {
                if same && stored && here.file == Absent {
                    return Plan {
                        trash: TrashStep::Restore,
                        file: FileStep::Leave,
                    };
                }
                return Plan {
                    trash: TrashStep::Discard,
                    file: live_file(here.file),
                };
            }
            Plan::only(live_file(here.file))
        }
        RemoteState::Trashed => Plan::only(match here.file {
            Synced { .. } => FileStep::MoveToTrash,
            Absent | Edited { .. } => FileStep::Leave,
        }),
        RemoteState::Purged => Plan {
            trash: match here.trash {
                TrashHere::Absent => TrashStep::Leave,
                TrashHere::Kept { .. } => TrashStep::Discard,
            },
            file: match here.file {
                Synced { .. } => FileStep::Remove,
                Absent | Edited { .. } => FileStep::Leave,
            },
        },
    }
}

fn live_file(file: FileHere) -> FileStep {
    match file {
        FileHere::Synced { same: true } | FileHere::Edited { same: true } => FileStep::Keep,
        FileHere::Edited { same: false } => FileStep::DownloadBeside,
        FileHere::Synced { same: false } => FileStep::Replace,
        FileHere::Absent => FileStep::Place,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use FileStep as F;
    use RemoteState::{Live, Purged, Trashed};
    use TrashStep as T;

    const FILES: [FileHere; 5] = [
        FileHere::Absent,
        FileHere::Synced { same: true },
        FileHere::Synced { same: false },
        FileHere::Edited { same: true },
        FileHere::Edited { same: false },
    ];
    const TRASHES: [TrashHere; 5] = [
        TrashHere::Absent,
        TrashHere::Kept {
            same: true,
            stored: true,
        },
        TrashHere::Kept {
            same: true,
            stored: false,
        },
        TrashHere::Kept {
            same: false,
            stored: true,
        },
        TrashHere::Kept {
            same: false,
            stored: false,
        },
    ];

    fn plain(state: RemoteState) -> There {
        There {
            state,
            damaged: false,
            path_ok: true,
        }
    }

    fn file(file: FileHere) -> Here {
        Here {
            file,
            trash: TrashHere::Absent,
            cloud_only: false,
        }
    }

    /// Every (file here, remote state) pair, nothing in Recently Deleted.
    #[test]
    fn each_file_state_meets_each_remote_state() {
        let syn = |same| FileHere::Synced { same };
        let ed = |same| FileHere::Edited { same };
        let table = [
            (FileHere::Absent, Live, F::Place),
            (syn(true), Live, F::Keep),
            (syn(false), Live, F::Replace),
            (ed(true), Live, F::Keep),
            (ed(false), Live, F::DownloadBeside),
            (FileHere::Absent, Trashed, F::Leave),
            (syn(true), Trashed, F::MoveToTrash),
            (syn(false), Trashed, F::MoveToTrash),
            (ed(true), Trashed, F::Leave),
            (ed(false), Trashed, F::Leave),
            (FileHere::Absent, Purged, F::Leave),
            (syn(true), Purged, F::Remove),
            (syn(false), Purged, F::Remove),
            (ed(true), Purged, F::Leave),
            (ed(false), Purged, F::Leave),
        ];
        for (here, state, want) in table {
            assert_eq!(
                reconcile(file(here), plain(state)),
                Plan::only(want),
                "{here:?} meeting {state:?}"
            );
        }
    }

    /// Every (copy in Recently Deleted, remote state) pair, no file in the folder.
    #[test]
    fn each_trashed_copy_meets_each_remote_state() {
        let kept = |same, stored| TrashHere::Kept { same, stored };
        let table = [
            (kept(true, true), Live, T::Restore, F::Leave),
            (kept(true, false), Live, T::Discard, F::Place),
            (kept(false, true), Live, T::Discard, F::Place),
            (kept(false, false), Live, T::Discard, F::Place),
            (kept(true, true), Trashed, T::Leave, F::Leave),
            (kept(false, false), Trashed, T::Leave, F::Leave),
            (kept(true, true), Purged, T::Discard, F::Leave),
            (kept(false, false), Purged, T::Discard, F::Leave),
        ];
        for (trash, state, want_trash, want_file) in table {
            let here = Here {
                file: FileHere::Absent,
                trash,
                cloud_only: false,
            };
            assert_eq!(
                reconcile(here, plain(state)),
                Plan {
                    trash: want_trash,
                    file: want_file
                },
                "{trash:?} meeting {state:?}"
            );
        }
    }

    #[test]
    fn a_damaged_asset_is_sent_again_only_from_a_synced_copy_of_its_bytes() {
        let damaged = There {
            damaged: true,
            ..plain(Live)
        };
        assert_eq!(
            reconcile(file(FileHere::Synced { same: true }), damaged),
            Plan::only(F::Resend)
        );
        assert_eq!(
            reconcile(file(FileHere::Synced { same: false }), damaged),
            Plan::only(F::Replace)
        );
        assert_eq!(
            reconcile(file(FileHere::Edited { same: true }), damaged),
            Plan::only(F::Keep)
        );
    }

    #[test]
    fn a_cloud_only_asset_is_followed_never_fetched() {
        let here = Here {
            cloud_only: true,
            ..file(FileHere::Absent)
        };
        assert_eq!(reconcile(here, plain(Live)), Plan::only(F::FollowCloudOnly));
        assert_eq!(
            reconcile(here, plain(Trashed)),
            Plan::only(F::ForgetCloudOnly)
        );
        assert_eq!(
            reconcile(here, plain(Purged)),
            Plan::only(F::ForgetCloudOnly)
        );
    }

    fn every_case() -> impl Iterator<Item = (Here, There)> {
        let mut cases = Vec::new();
        for file in FILES {
            for trash in TRASHES {
                for cloud_only in [false, true] {
                    for state in [Live, Trashed, Purged] {
                        for damaged in [false, true] {
                            for path_ok in [false, true] {
                                cases.push((
                                    Here {
                                        file,
                                        trash,
                                        cloud_only,
                                    },
                                    There {
                                        state,
                                        damaged,
                                        path_ok,
                                    },
                                ));
                            }
                        }
                    }
                }
            }
        }
        cases.into_iter()
    }

    /// The promises, over all 600 combinations of what is here and what the feed says.
    #[test]
    fn no_combination_loses_an_edit_or_writes_a_refused_path() {
        let mut seen = 0;
        for (here, there) in every_case() {
            seen += 1;
            let plan = reconcile(here, there);
            let why = format!("{here:?} / {there:?} → {plan:?}");
            if matches!(here.file, FileHere::Edited { .. }) {
                assert!(
                    !matches!(plan.file, F::Replace | F::MoveToTrash | F::Remove),
                    "an unsent edit was overwritten, trashed or removed: {why}"
                );
            }
            if !there.path_ok && there.state != Purged {
                assert!(
                    matches!(
                        plan.file,
                        F::RefusePath | F::Resend | F::FollowCloudOnly | F::ForgetCloudOnly
                    ) && plan.trash == T::Leave,
                    "a refused path would be written: {why}"
                );
            }
            if plan.trash == T::Restore {
                assert_eq!(
                    (here.file, here.trash, there.state),
                    (
                        FileHere::Absent,
                        TrashHere::Kept {
                            same: true,
                            stored: true
                        },
                        Live
                    ),
                    "{why}"
                );
            }
            if there.state == Purged {
                assert!(
                    !matches!(here.file, FileHere::Synced { .. }) || plan.file != F::Leave,
                    "a purged photo stays here: {why}"
                );
            }
            if plan.file == F::Place {
                assert_eq!(here.file, FileHere::Absent, "placed over a file: {why}");
            }
        }
        assert_eq!(seen, 600);
    }
}
