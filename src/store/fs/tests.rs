use super::*;
use std::os::unix::fs::FileExt;

fn store() -> (tempfile::TempDir, FsStore) {
    let dir = tempfile::tempdir().unwrap();
    let s = FsStore::open(dir.path()).unwrap();
    (dir, s)
}

#[test]
fn only_verified_content_becomes_visible() {
    let (_d, s) = store();
    let good = Digest::of(b"hello");
    let mut w = s.create(&good).unwrap();
    w.write(b"hel").unwrap();
    let r = w.reader().unwrap();
    w.write(b"lo").unwrap();
    assert_eq!(s.stat(&good).unwrap(), None, "not visible before commit");
    let mut buf = [0u8; 5];
    r.read_exact_at(&mut buf, 0).unwrap();
    assert_eq!(&buf, b"hello", "readers follow the spool");
    assert_eq!(w.commit().unwrap(), 5);
    assert_eq!(s.stat(&good).unwrap(), Some(5));
    r.read_exact_at(&mut buf, 0).unwrap();
    assert_eq!(&buf, b"hello", "a reader survives the rename");

    let mut w = s.create(&Digest::of(b"other")).unwrap();
    w.write(b"wrong").unwrap();
    assert!(matches!(w.commit(), Err(CommitError::Mismatch { .. })));
    assert_eq!(s.stat(&Digest::of(b"other")).unwrap(), None);
    assert_eq!(
        fs::read_dir(&s.tmp).unwrap().count(),
        0,
        "failed spool removed"
    );
}

#[test]
fn dropped_writers_leave_nothing_and_leftovers_are_cleared_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let s = FsStore::open(dir.path()).unwrap();
    let mut w = s.create(&Digest::of(b"x")).unwrap();
    w.write(b"x").unwrap();
    let mut batch = s.batch().unwrap();
    let mut b = batch.add(&Digest::of(b"yy")).unwrap();
    b.write(b"yy").unwrap();
    b.commit().unwrap();
    assert_eq!(s.spooled().unwrap(), 3, "spools and batches count");
    drop((w, batch));
    assert_eq!(fs::read_dir(&s.tmp).unwrap().count(), 0);
    assert_eq!(s.spooled().unwrap(), 0);
    fs::write(s.tmp.join("leftover"), b"junk").unwrap();
    let s = FsStore::open(dir.path()).unwrap();
    assert_eq!(fs::read_dir(&s.tmp).unwrap().count(), 0);
}

#[test]
fn batches_publish_all_or_nothing() {
    let (_d, s) = store();
    let (a, b) = (Digest::of(b"a"), Digest::of(b"b"));
    {
        let mut batch = s.batch().unwrap();
        let mut w = batch.add(&a).unwrap();
        w.write(b"a").unwrap();
        w.commit().unwrap();
        assert!(batch.contains(&a));
        assert_eq!(s.stat(&a).unwrap(), None, "not visible before publish");
    }
    assert_eq!(s.stat(&a).unwrap(), None, "a dropped batch leaves nothing");
    assert_eq!(fs::read_dir(&s.tmp).unwrap().count(), 0);
    let mut batch = s.batch().unwrap();
    for (d, bytes) in [(&a, b"a"), (&b, b"b")] {
        let mut w = batch.add(d).unwrap();
        w.write(bytes).unwrap();
        w.commit().unwrap();
    }
    let mut bad = batch.add(&a).unwrap();
    bad.write(b"not a").unwrap();
    assert!(bad.commit().is_err(), "batch writers verify too");
    assert_eq!(batch.publish().unwrap(), 2);
    assert_eq!(s.list().unwrap().len(), 2);
    let q = s.quarantine(&a).unwrap().unwrap();
    assert!(q.is_file() && s.stat(&a).unwrap().is_none());
    assert_eq!(s.list().unwrap(), vec![(b.clone(), 1)]);
}

#[test]
fn put_open_remove() {
    let (_d, s) = store();
    let d = Digest::of(b"m");
    s.put(&d, b"m").unwrap();
    assert!(s.open(&d).unwrap().is_some());
    assert!(s.path(&d).starts_with(&s.blobs));
    assert!(s.remove(&d).unwrap());
    assert!(!s.remove(&d).unwrap());
    assert!(s.open(&d).unwrap().is_none());
}

#[test]
fn usage_is_counted_as_blobs_come_and_go_and_matches_a_walk() {
    let (dir, s) = store();
    let a = Digest::of(b"aaaa");
    s.put(&a, b"aaaa").unwrap();
    assert_eq!(s.usage().unwrap(), (4, 1), "the first ask walks");
    s.put(&a, b"aaaa").unwrap();
    assert_eq!(
        s.usage().unwrap(),
        (4, 1),
        "storing a blob again adds nothing"
    );
    let b = Digest::of(b"bb");
    s.put(&b, b"bb").unwrap();
    let mut batch = s.batch().unwrap();
    let c = Digest::of(b"ccc");
    let mut w = batch.add(&c).unwrap();
    w.write(b"ccc").unwrap();
    w.commit().unwrap();
    assert_eq!(s.usage().unwrap(), (6, 2), "a batch counts once published");
    batch.publish().unwrap();
    assert_eq!(s.usage().unwrap(), (9, 3));
    assert!(s.remove(&b).unwrap());
    assert!(!s.remove(&b).unwrap());
    s.quarantine(&c).unwrap();
    assert_eq!(s.usage().unwrap(), (4, 1));
    let walked = FsStore::open(dir.path()).unwrap();
    assert_eq!(
        walked.usage().unwrap(),
        s.usage().unwrap(),
        "a fresh walk agrees"
    );
}
