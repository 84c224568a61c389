use super::*;
use crate::store::journal::Journal;
use std::path::Path;

fn repo(r: &str, n: &str) -> Repository {
    Repository {
        registry: r.parse().unwrap(),
        name: n.parse().unwrap(),
    }
}

#[test]
fn records_round_trip_and_registries_never_mix() {
    let dir = tempfile::tempdir().unwrap();
    let idx = SledIndex::open(&dir.path().join("index")).unwrap();
    let hub = repo("docker.io", "library/nginx");
    let ghcr = repo("ghcr.io", "library/nginx");
    let t: Tag = "latest".parse().unwrap();
    let rec = TagRecord {
        digest: Digest::of(b"m"),
        media_type: "application/x".into(),
        fetched_at_ms: 7,
    };
    idx.set_tag(&hub, &t, &rec).unwrap();
    assert_eq!(idx.tag(&hub, &t).unwrap(), Some(rec.clone()));
    assert_eq!(idx.tag(&ghcr, &t).unwrap(), None);
    assert_eq!(idx.tags(&hub).unwrap(), vec!["latest"]);
    assert!(
        idx.tags(&repo("docker.io", "library/ngin"))
            .unwrap()
            .is_empty(),
        "prefixes end at \\0"
    );

    idx.link(&hub, &rec.digest).unwrap();
    assert!(idx.is_linked(&hub, &rec.digest).unwrap());
    assert!(!idx.is_linked(&ghcr, &rec.digest).unwrap());

    let info = BlobInfo {
        size: 3,
        media_type: None,
    };
    idx.set_blob_info(&rec.digest, &info).unwrap();
    assert_eq!(idx.blob_info(&rec.digest).unwrap(), Some(info));
    idx.touch(&rec.digest).unwrap();
    assert!(idx.last_access(&rec.digest).unwrap().is_some());
    assert_eq!(
        idx.all_tags().unwrap(),
        vec![(hub.clone(), t.clone(), rec.clone())]
    );
    assert!(
        !idx.set_pinned("docker.io/library/nginx:latest", true)
            .unwrap()
    );
    assert!(
        idx.set_pinned("docker.io/library/nginx:latest", true)
            .unwrap()
    );
    assert_eq!(idx.pins().unwrap(), vec!["docker.io/library/nginx:latest"]);
    assert!(
        idx.set_pinned("docker.io/library/nginx:latest", false)
            .unwrap()
    );
    assert!(idx.pins().unwrap().is_empty());
    assert!(
        !idx.pin_at("docker.io/library/nginx:latest", &rec.digest)
            .unwrap()
    );
    assert!(
        idx.set_pinned("docker.io/library/nginx:latest", true)
            .unwrap()
    );
    let kept = idx.pinned_digest("docker.io/library/nginx:latest").unwrap();
    assert_eq!(
        kept,
        Some(rec.digest.clone()),
        "pinning again keeps the digest"
    );
    idx.remove_tag(&hub, &t).unwrap();
    assert_eq!(idx.tag(&hub, &t).unwrap(), None);
    idx.flush().unwrap();
}

#[test]
fn a_foreign_schema_is_refused_with_advice() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("index");
    {
        let db = sled::open(&path).unwrap();
        db.open_tree("meta")
            .unwrap()
            .insert("schema", "99")
            .unwrap();
        db.flush().unwrap();
    }
    let e = SledIndex::open(&path).err().unwrap().to_string();
    assert!(e.contains("move it away"), "{e}");
}

fn filled(data: &Path) -> (Repository, Tag, TagRecord) {
    let idx = SledIndex::open(&data.join("index")).unwrap();
    let hub = repo("docker.io", "library/nginx");
    let t: Tag = "latest".parse().unwrap();
    let rec = TagRecord {
        digest: Digest::of(b"m"),
        media_type: "application/vnd.oci.image.manifest.v1+json".into(),
        fetched_at_ms: 7,
    };
    idx.set_tag(&hub, &t, &rec).unwrap();
    // A revalidation of the same answer, and a tag that came and went.
    idx.set_tag(
        &hub,
        &t,
        &TagRecord {
            fetched_at_ms: 9,
            ..rec.clone()
        },
    )
    .unwrap();
    let gone: Tag = "old".parse().unwrap();
    idx.set_tag(&hub, &gone, &rec).unwrap();
    idx.remove_tag(&hub, &gone).unwrap();
    idx.link(&hub, &rec.digest).unwrap();
    let info = BlobInfo {
        size: 1,
        media_type: Some(rec.media_type.clone()),
    };
    idx.set_blob_info(&rec.digest, &info).unwrap();
    idx.set_digest_pull(&hub, &Digest::of(b"p"), 5).unwrap();
    idx.set_referrers(&hub, &rec.digest, &referrers_record())
        .unwrap();
    idx.pin_at("docker.io/library/nginx:latest", &rec.digest)
        .unwrap();
    idx.set_pinned("docker.io/library/redis:7", true).unwrap();
    idx.set_pinned("docker.io/library/redis:6", true).unwrap();
    idx.set_pinned("docker.io/library/redis:6", false).unwrap();
    idx.flush().unwrap();
    (hub, t, rec)
}

fn referrers_record() -> ReferrersRecord {
    ReferrersRecord {
        digest: Digest::of(b"referrers"),
        fetched_at_ms: 11,
    }
}

fn assert_same_facts(data: &Path, (hub, t, rec): &(Repository, Tag, TagRecord)) {
    let idx = SledIndex::open(&data.join("index")).unwrap();
    let got = idx.tag(hub, t).unwrap().expect("the tag is rebuilt");
    assert_eq!(got.digest, rec.digest);
    assert_eq!(
        idx.tags(hub).unwrap(),
        vec!["latest"],
        "the removed tag stays removed"
    );
    assert!(idx.is_linked(hub, &rec.digest).unwrap());
    assert_eq!(idx.blob_info(&rec.digest).unwrap().unwrap().size, 1);
    assert_eq!(
        idx.digest_pulls().unwrap(),
        vec![(hub.clone(), Digest::of(b"p"), 5)]
    );
    assert_eq!(
        idx.pins().unwrap(),
        vec![
            "docker.io/library/nginx:latest",
            "docker.io/library/redis:7"
        ]
    );
    assert_eq!(
        idx.pinned_digest("docker.io/library/nginx:latest").unwrap(),
        Some(rec.digest.clone())
    );
    assert_eq!(
        idx.referrers(hub, &rec.digest).unwrap(),
        Some(referrers_record())
    );
    let elsewhere = repo("docker.io", "library/other");
    assert_eq!(idx.referrers(&elsewhere, &rec.digest).unwrap(), None);
}

#[test]
fn a_deleted_index_is_rebuilt_from_the_journal() {
    let dir = tempfile::tempdir().unwrap();
    let facts = filled(dir.path());
    std::fs::remove_dir_all(dir.path().join("index")).unwrap();
    assert_same_facts(dir.path(), &facts);
}

#[test]
fn a_compacted_journal_alone_rebuilds_the_same_index() {
    let dir = tempfile::tempdir().unwrap();
    let facts = filled(dir.path());
    let journal = dir.path().join("journal.jsonl");
    let before = std::fs::metadata(&journal).unwrap().len();
    {
        let idx = SledIndex::open(&dir.path().join("index")).unwrap();
        idx.compact_unordered().unwrap();
    }
    let after = std::fs::metadata(&journal).unwrap().len();
    assert!(
        after < before,
        "the tag that came and went is not in the snapshot"
    );
    std::fs::remove_dir_all(dir.path().join("index")).unwrap();
    assert_same_facts(dir.path(), &facts);
}

#[test]
fn a_grown_journal_is_compacted_after_the_open_not_during_it() {
    let dir = tempfile::tempdir().unwrap();
    let facts = filled(dir.path());
    let journal = Journal::path_in(dir.path());
    {
        // Over a MiB of records, of tags that came and went.
        let idx = SledIndex::open(&dir.path().join("index")).unwrap();
        let (hub, rec) = (&facts.0, &facts.2);
        for i in 0..4000 {
            let t: Tag = format!("gone-{i}").parse().unwrap();
            idx.set_tag(hub, &t, rec).unwrap();
            idx.remove_tag(hub, &t).unwrap();
        }
        idx.flush().unwrap();
    }
    let grown = std::fs::metadata(&journal).unwrap().len();
    assert!(grown > 1 << 20, "{grown}");
    let idx = SledIndex::open(&dir.path().join("index")).unwrap();
    assert_eq!(
        std::fs::metadata(&journal).unwrap().len(),
        grown,
        "not at open"
    );
    assert!(idx.compact_if_due().unwrap());
    assert!(std::fs::metadata(&journal).unwrap().len() < grown / 100);
    assert!(!idx.compact_if_due().unwrap(), "once");
    drop(idx);
    std::fs::remove_dir_all(dir.path().join("index")).unwrap();
    assert_same_facts(dir.path(), &facts);
}

#[test]
fn a_corrupt_index_is_moved_aside_and_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    let facts = filled(dir.path());
    let index = dir.path().join("index");
    for entry in std::fs::read_dir(&index).unwrap() {
        let p = entry.unwrap().path();
        if p.is_file() {
            std::fs::write(&p, vec![0xA5u8; 4096]).unwrap();
        }
    }
    assert_same_facts(dir.path(), &facts);
    let kept = std::fs::read_dir(dir.path())
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with("index.corrupt-")
        })
        .count();
    assert_eq!(kept, 1, "the corrupt index is kept for inspection");
}

#[test]
fn reindex_rebuilds_a_healthy_index_and_a_second_airlock_is_told_it_is_locked() {
    let dir = tempfile::tempdir().unwrap();
    let facts = filled(dir.path());
    let done = SledIndex::reindex(dir.path()).unwrap();
    assert_eq!(
        (done.tags, done.links, done.pins, done.damaged),
        (1, 1, 2, 0)
    );
    assert_same_facts(dir.path(), &facts);

    let _first = SledIndex::open(&dir.path().join("index")).unwrap();
    let e = SledIndex::open(&dir.path().join("index"))
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("in use by another airlock"), "{e}");
    let e = SledIndex::reindex(dir.path()).err().unwrap().to_string();
    assert!(e.contains("in use by another airlock"), "{e}");
}

#[test]
fn revalidations_do_not_grow_the_journal() {
    let dir = tempfile::tempdir().unwrap();
    let (hub, t, rec) = filled(dir.path());
    let idx = SledIndex::open(&dir.path().join("index")).unwrap();
    let before = std::fs::metadata(Journal::path_in(dir.path()))
        .unwrap()
        .len();
    for i in 0..100 {
        idx.set_tag(
            &hub,
            &t,
            &TagRecord {
                fetched_at_ms: 100 + i,
                ..rec.clone()
            },
        )
        .unwrap();
        idx.link(&hub, &rec.digest).unwrap();
    }
    let after = std::fs::metadata(Journal::path_in(dir.path()))
        .unwrap()
        .len();
    assert_eq!(before, after);
}

#[test]
fn deleted_content_is_forgotten_and_stays_forgotten_after_a_rebuild() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("index");
    let idx = SledIndex::open(&path).unwrap();
    let (a, b) = (repo("docker.io", "library/a"), repo("ghcr.io", "org/b"));
    let (gone, kept) = (Digest::of(b"gone"), Digest::of(b"kept"));
    let info = BlobInfo {
        size: 4,
        media_type: None,
    };
    for d in [&gone, &kept] {
        idx.link(&a, d).unwrap();
        idx.link(&b, d).unwrap();
        idx.set_blob_info(d, &info).unwrap();
        idx.touch(d).unwrap();
        idx.set_referrers(&a, d, &referrers_record()).unwrap();
    }
    idx.forget_blob(&gone).unwrap();
    let check = |idx: &SledIndex| {
        assert!(!idx.is_linked(&a, &gone).unwrap() && !idx.is_linked(&b, &gone).unwrap());
        assert_eq!(idx.blob_info(&gone).unwrap(), None);
        assert_eq!(idx.last_access(&gone).unwrap(), None);
        assert!(idx.is_linked(&a, &kept).unwrap() && idx.is_linked(&b, &kept).unwrap());
        assert_eq!(idx.blob_info(&kept).unwrap(), Some(info.clone()));
        assert_eq!(idx.referrers(&a, &gone).unwrap(), None);
        assert_eq!(idx.referrers(&a, &kept).unwrap(), Some(referrers_record()));
    };
    check(&idx);
    idx.flush().unwrap();
    drop(idx);
    std::fs::remove_dir_all(&path).unwrap();
    let idx = SledIndex::open(&path).unwrap();
    assert!(
        !idx.is_linked(&a, &gone).unwrap(),
        "the journal replays the forget"
    );
    assert_eq!(idx.blob_info(&gone).unwrap(), None);
    assert!(idx.is_linked(&b, &kept).unwrap());
    // And an index from before the owners tree learns them at open.
    idx.read(|t| t.owners.clear().map_err(err)).unwrap();
    drop(idx);
    let idx = SledIndex::open(&path).unwrap();
    idx.forget_blob(&kept).unwrap();
    assert!(!idx.is_linked(&a, &kept).unwrap() && !idx.is_linked(&b, &kept).unwrap());
}

#[test]
fn writes_sled_lost_in_a_crash_are_applied_again_from_the_journal() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("index");
    let idx = SledIndex::open(&path).unwrap();
    idx.set_pinned("docker.io/library/before:1", true).unwrap();
    idx.flush().unwrap();
    idx.set_pinned("docker.io/library/after:1", true).unwrap();
    // sled loses what it had not flushed (a kill -9): here, by hand, past the journal.
    idx.read(|t| {
        t.pins.remove("docker.io/library/after:1").map_err(err)?;
        t.db.flush().map_err(err)
    })
    .unwrap();
    drop(idx);
    let idx = SledIndex::open(&path).unwrap();
    assert_eq!(
        idx.pins().unwrap(),
        vec!["docker.io/library/after:1", "docker.io/library/before:1"]
    );
}

#[test]
fn tags_are_walked_in_pages_in_key_order() {
    let dir = tempfile::tempdir().unwrap();
    let idx = SledIndex::open(&dir.path().join("index")).unwrap();
    let rec = TagRecord {
        digest: Digest::of(b"m"),
        media_type: "application/x".into(),
        fetched_at_ms: 7,
    };
    // A name that is a prefix of another must not end the walk or swap the order.
    let (a, ab) = (repo("docker.io", "org/a"), repo("docker.io", "org/a-b"));
    let mut want = Vec::new();
    for n in 0..(2 * crate::store::TAG_PAGE + 3) {
        let repo = if n % 2 == 0 { &a } else { &ab };
        let tag: Tag = format!("v{n:05}").parse().unwrap();
        idx.set_tag(repo, &tag, &rec).unwrap();
        want.push((repo.clone(), tag));
    }
    want.sort_by_key(|(r, t)| repo_key(r, t.as_str()));
    let got: Vec<_> = idx
        .all_tags()
        .unwrap()
        .into_iter()
        .map(|(r, t, _)| (r, t))
        .collect();
    assert_eq!(got, want, "every tag once, in key order, across pages");
    let (r, t) = &want[10];
    let page = idx.tags_after(Some((r, t)), 5).unwrap();
    assert_eq!(page.len(), 5);
    assert_eq!((&page[0].0, &page[0].1), (&want[11].0, &want[11].1));
    let (r, t) = want.last().unwrap();
    assert!(idx.tags_after(Some((r, t)), 5).unwrap().is_empty());
}
