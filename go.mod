module github.com/exec-reaper/exec-reaper

go 1.26.0
