CREATE INDEX todos_by_done ON todos (done, id);
