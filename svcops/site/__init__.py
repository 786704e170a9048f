"""What the user wrote: a site folder and an inventory's host data, loaded and checked.

    yamlsrc       YAML with the line of every value (strict, as Kubernetes decodes)
    diagnostics   every problem, as file:line: field: message
    svcops.schemas (schemas/ at the top of the repository) the JSON Schemas of each kind
    validate      what the schemas cannot say: Kubernetes' validation and defaulting
    model         the frozen values the core passes along, from every stage
    files         reading the folder's files: regular files only, never blocking
    load          a site folder in, a checked Site (or every error) out
    cache         what loading gave for each file without errors, kept between runs (~/.cache/svcops)
    lockfile      svcops.lock: allocations as a reviewable, mergeable file, closed by its last line
    sitelock      one writer per site: an flock on the folder, with the holder named on timeout
    hostdata      nodes and workloads from a pyinfra inventory's host data
"""
