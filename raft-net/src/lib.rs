//! openraft glue (log store on the WAL, state machine on the MVCC store) and the
//! peer transport. Built by the server and clustering issues; nothing here yet.
