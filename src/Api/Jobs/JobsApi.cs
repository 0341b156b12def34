using Conveyor.Api.Backpressure;
using Conveyor.Api.Hosting;
using Conveyor.Api.Security;
using Conveyor.Contracts;
using Conveyor.ServiceDefaults;
using Conveyor.Storage;
using Conveyor.Storage.Jobs;
using Microsoft.AspNetCore.Http.HttpResults;
using Microsoft.EntityFrameworkCore;
using Microsoft.Extensions.Options;
using Microsoft.OpenApi;

namespace Conveyor.Api.Jobs;

/// <summary>
/// <c>POST /api/jobs/{kind}</c> submits a job (now or at <c>runAt</c>), <c>POST /api/jobs/{kind}/batch</c>
/// up to 100 of them; <c>GET /api/jobs/{jobId}</c> shows one; <c>GET /api/jobs</c> lists jobs;
/// <c>GET /api/jobs/{jobId}/result</c> what a succeeded one did; <c>DELETE /api/jobs/{jobId}</c> cancels one not yet started.
/// </summary>
internal static partial class JobsApi
{
    public const int MaxBodyBytes = 256 * 1024;

    /// <summary>The most jobs one batch may hold (fewer when the client's rate-limit burst is smaller).</summary>
    public const int MaxBatchJobs = 100;

    /// <summary>The largest batch body: room for many jobs, not for <see cref="MaxBatchJobs"/> of the largest.</summary>
    public const int MaxBatchBodyBytes = 1024 * 1024;

    /// <summary>Seconds a client should wait before retrying a submission the broker did not confirm.</summary>
    public const int RetryAfterSeconds = 5;

    /// <summary>The longest <c>GET /api/jobs/{jobId}?waitSeconds=</c> holds an answer: below common proxy and client timeouts.</summary>
    public const int MaxWaitSeconds = 30;

    /// <summary>The most jobs one <c>POST /api/jobs/run-now</c> makes due; its default.</summary>
    public const int MaxRunNowLimit = 10_000, DefaultRunNowLimit = 1_000;

    private const int MaxRunNowBodyBytes = 4096;

    public static IServiceCollection AddJobs(this IServiceCollection services)
    {
        services.AddSingleton(TimeProvider.System);
        services.AddSingleton<JobRows>();
        services.AddSingleton<SubmissionMetrics>();
        services.AddOptions<JobWaitOptions>().BindConfiguration(StrandedJobsOptions.SectionName).ValidateDataAnnotations().ValidateOnStart();
        services.AddSingleton<JobWaitLimit>();
        services.AddOptions<WebhookUrlOptions>().BindConfiguration(WebhookUrlOptions.SectionName)
            .PostConfigure<IConfiguration>((options, configuration) => options.ReceiverSettings = WebhookReceiverOrigins.EntrySettings(configuration))
            .ValidateDataAnnotations().ValidateOnStart();
        services.AddSingleton<WebhookUrlRules>();
        services.AddScoped<JobSubmitter>();
        services.AddSingleton<JobRowTransactions>();
        services.AddScoped<JobCanceller>();
        services.AddScoped<JobRunNow>();
        services.AddOptions<JobListingOptions>().BindConfiguration(StrandedJobsOptions.SectionName).ValidateDataAnnotations().ValidateOnStart();
        services.AddOptions<StrandedJobsOptions>().BindConfiguration(StrandedJobsOptions.SectionName).ValidateDataAnnotations().ValidateOnStart();
        services.AddSingleton<IValidateOptions<StrandedJobsOptions>, StrandedJobsOptionsValidator>();
        services.AddSingleton<StrandedJobRepublisher>();
        services.AddSingleton<StrandedJobsMonitor>();
        services.AddHostedService(provider => provider.GetRequiredService<StrandedJobsMonitor>());
        // First in the chain: the answers of these endpoints use the generated code, anything else
        // falls through to the reflection-based resolver.
        services.ConfigureHttpJsonOptions(json => json.SerializerOptions.TypeInfoResolverChain.Insert(0, JobsJson.Default));
        return services;
    }

    /// <summary>
    /// A JSON body, and the problems a submission may answer besides 400 and those of any call (whose 429 and 503
    /// a submission also answers for the client's rate limit, a full queue, and the broker); its 409, a submission
    /// of the same job in progress, with Retry-After.
    /// </summary>
    private static RouteHandlerBuilder AcceptsSubmission(this RouteHandlerBuilder endpoint) => endpoint
        .AcceptsJson()
        .ProducesProblem(StatusCodes.Status404NotFound)
        .ProducesProblemWithRetryAfter(StatusCodes.Status409Conflict)
        .ProducesProblem(StatusCodes.Status413PayloadTooLarge)
        .ProducesProblem(StatusCodes.Status415UnsupportedMediaType)
        .ProducesProblem(StatusCodes.Status422UnprocessableEntity);

    /// <summary>
    /// A JSON body, as the OpenAPI document declares it. Not <c>Accepts</c>: routing would refuse any other media type
    /// itself, with a bare 415 before the handler runs (no detail, no permit taken, 415 for an unknown kind too); the
    /// handler answers it instead (<see cref="RequestBody.UnsupportedMedia"/>), in its place among its refusals.
    /// </summary>
    private static RouteHandlerBuilder AcceptsJson(this RouteHandlerBuilder endpoint) => endpoint
        .AddOpenApiOperationTransformer((operation, _, _) =>
        {
            operation.RequestBody = new OpenApiRequestBody
            {
                Required = true,
                Content = new Dictionary<string, OpenApiMediaType>(StringComparer.Ordinal) { ["application/json"] = new() { Schema = new OpenApiSchema() } },
            };
            return Task.CompletedTask;
        });

    public static IEndpointRouteBuilder MapJobsApi(this IEndpointRouteBuilder endpoints)
    {
        // Made now, not at the first wait, so that its gauge and counter are exported (at 0) from the start.
        endpoints.ServiceProvider.GetRequiredService<JobWaitLimit>();
        var jobs = endpoints.MapGroup("/api/jobs")
            .WithTags("Jobs")
            .RefuseUnknownQueryParameters()
            .RefuseRepeatedQueryParameters()
            .ProducesCallerProblems();

        jobs.MapPost("/{kind}", SubmitJob)
            .WithName("SubmitJob")
            .RequireAuthorization(ApiPolicies.JobsPublish)
            .WithSummary("Submit a job: charge-payment, deliver-webhook or generate-report; optional runAt schedules it.")
            .AcceptsSubmission();

        jobs.MapPost("/{kind}/batch", SubmitBatch)
            .WithName("SubmitJobBatch")
            .RequireAuthorization(ApiPolicies.JobsPublish)
            .WithSummary("Submit 1 to 100 jobs of one kind: { jobs: [ … ] }, each as SubmitJob takes it; accepted or refused whole when invalid.")
            .AcceptsSubmission();

        jobs.MapGet("", ListJobs)
            .WithName("ListJobs")
            .RequireAuthorization(ApiPolicies.JobsRead)
            .WithSummary("Jobs, newest first (order=oldest: oldest first up to the settle horizon, a feed to poll), optionally of one status and kind (and, with the kind, one business key); page on with nextCursor.");

        jobs.MapGet("/{jobId}", GetJob)
            .WithName("GetJob")
            .RequireAuthorization(ApiPolicies.JobsRead)
            .WithSummary("The status of a job; with waitSeconds, answers once the job has ended or that long has passed (at once, with Conveyor-Wait-Skipped, while the Api holds as many waits as it allows).")
            .ProducesProblem(StatusCodes.Status404NotFound)
            .DeclaresWaitSkippedHeader();

        jobs.MapGet("/{jobId}/result", GetJobResult)
            .WithName("GetJobResult")
            .RequireAuthorization(ApiPolicies.JobsRead)
            .WithSummary("What a succeeded job did: a charge's gateway charge id, a webhook's answer, a report's totals; 409 until it has succeeded.")
            .ProducesProblem(StatusCodes.Status404NotFound)
            .ProducesProblem(StatusCodes.Status409Conflict);

        jobs.MapDelete("/{jobId}", CancelJob)
            .WithName("CancelJob")
            .RequireAuthorization(ApiPolicies.JobsPublish)
            .WithSummary("Cancel a queued or scheduled job; 409 when it has started, or, with Retry-After, while a worker or the scheduler holds it.")
            .ProducesProblem(StatusCodes.Status404NotFound)
            .ProducesProblemWithRetryAfter(StatusCodes.Status409Conflict);

        jobs.MapPost("/run-now", RunJobsNow)
            .WithName("RunJobsNow")
            .RequireAuthorization(ApiPolicies.JobsPublish)
            .WithSummary("Make up to limit jobs of a kind that wait in the store (status retry-scheduled by default, or scheduled) due now, soonest first: after an outage, the redeliveries it left waiting.")
            .AcceptsJson()
            .ProducesProblem(StatusCodes.Status413PayloadTooLarge)
            .ProducesProblem(StatusCodes.Status415UnsupportedMediaType);

        jobs.MapPost("/{jobId}/run-now", RunJobNow)
            .WithName("RunJobNow")
            .RequireAuthorization(ApiPolicies.JobsPublish)
            .WithSummary("Make a scheduled or retry-scheduled job due now: its stored command is published at once, keeping its retry count; 409 for a job in any other status, or, with Retry-After, while a worker or the scheduler holds it.")
            .ProducesProblem(StatusCodes.Status404NotFound)
            .ProducesProblemWithRetryAfter(StatusCodes.Status409Conflict);

        return endpoints;
    }

    /// <param name="waitSeconds">
    /// 0 to <see cref="MaxWaitSeconds"/> (default 0): how long to hold the answer while the job has not
    /// ended (succeeded, dead-lettered or cancelled). The row is read again at growing intervals (0.1 s
    /// doubling up to 1 s), so a waiting client costs at most about one query a second. A shutdown of
    /// the Api ends the wait at once, with the job as it is, so waiting clients do not hold it up.
    /// The Api holds at most <see cref="JobWaitOptions.MaxConcurrentWaits"/> waits at once (<see cref="JobWaitLimit"/>): one
    /// more is answered at once, with the job as its first read found it and <see cref="JobWaitLimit.SkippedHeader"/>,
    /// not refused, so a client that loops on waitSeconds goes on working and the reads stay bounded.
    /// </param>
    internal static async Task<Results<Ok<JobDetails>, ValidationProblem, ProblemHttpResult>> GetJob(
        string jobId, string? waitSeconds, ConveyorDbContext db, TimeProvider clock, IHostApplicationLifetime lifetime,
        JobWaitLimit waits, HttpResponse response, CancellationToken cancellationToken)
    {
        if (!RouteIds.TryParse(jobId, nameof(jobId), out var id, out var invalid))
        {
            return invalid;
        }

        if (!QueryIntegers.TryRead(waitSeconds, 0, 0, MaxWaitSeconds, out var wait))
        {
            return TypedResults.ValidationProblem(new Dictionary<string, string[]>
            {
                [nameof(waitSeconds)] = [$"Must be an integer from 0 to {MaxWaitSeconds}."],
            });
        }

        var deadline = clock.GetTimestamp() + (long)(wait * (double)clock.TimestampFrequency);
        var job = await ReadJobAsync(db, id, cancellationToken);
        if (job is null)
        {
            return JobNotFound(id);
        }

        if (wait == 0 || HasEnded(job.Status) || lifetime.ApplicationStopping.IsCancellationRequested)
        {
            return TypedResults.Ok(JobDetails.From(job));
        }

        // Taken only by a wait that will hold its answer, given back however it ends: the job ended, the time is up,
        // the Api stops, the client went away or a read failed.
        using var slot = waits.TryEnter();
        if (slot is null)
        {
            response.Headers[JobWaitLimit.SkippedHeader] = JobWaitLimit.TooManyWaits;
            return TypedResults.Ok(JobDetails.From(job));
        }

        var pause = TimeSpan.FromMilliseconds(100);
        using var waitEnds = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken, lifetime.ApplicationStopping);
        while (true)
        {
            var left = clock.GetElapsedTime(clock.GetTimestamp(), deadline);
            if (left <= TimeSpan.Zero || waitEnds.IsCancellationRequested)
            {
                return TypedResults.Ok(JobDetails.From(job));
            }

            try
            {
                await Task.Delay(pause < left ? pause : left, clock, waitEnds.Token);
            }
            catch (OperationCanceledException) when (!cancellationToken.IsCancellationRequested)
            {
                // The Api is stopping: read the row once more and answer.
            }

            pause = TimeSpan.FromTicks(Math.Min(pause.Ticks * 2, TimeSpan.TicksPerSecond));
            job = await ReadJobAsync(db, id, cancellationToken);
            if (job is null)
            {
                return JobNotFound(id);
            }

            if (HasEnded(job.Status))
            {
                return TypedResults.Ok(JobDetails.From(job));
            }
        }
    }

    // The request's token goes to Npgsql here, unlike the queue locks' commands (QueueLease.RunAsync): this
    // read holds no lock and no session state, and a wait holds no connection between reads. Aborted while
    // the server does not answer, it gives its pooled connection back when Npgsql's cancel request gives up
    // (about 30 s with the default Timeout of 15 s), sooner than without the token, where the command timeout
    // (45 s) comes first and then the same cancel request; either way a thread waits on that cancel request.
    private static Task<Job?> ReadJobAsync(ConveyorDbContext db, Guid id, CancellationToken cancellationToken) =>
        db.Jobs.AsNoTracking().WithoutRequestBody().FirstOrDefaultAsync(j => j.Id == id, cancellationToken);

    /// <summary>Declares <see cref="JobWaitLimit.SkippedHeader"/> on the 200 of <c>GET /api/jobs/{jobId}</c> in the OpenAPI document.</summary>
    private static RouteHandlerBuilder DeclaresWaitSkippedHeader(this RouteHandlerBuilder endpoint) => endpoint
        .AddOpenApiOperationTransformer((operation, _, _) =>
        {
            if (operation.Responses?.GetValueOrDefault("200") is OpenApiResponse ok)
            {
                ok.Headers ??= new Dictionary<string, IOpenApiHeader>(StringComparer.OrdinalIgnoreCase);
                ok.Headers[JobWaitLimit.SkippedHeader] = new OpenApiHeader
                {
                    Description = $"Present ({JobWaitLimit.TooManyWaits}) when waitSeconds asked for a wait and the Api already held as many as it allows "
                        + "(Jobs:MaxConcurrentWaits): the job as it is, answered at once. A client that loops should pause before it asks again.",
                    Schema = new OpenApiSchema { Type = JsonSchemaType.String },
                };
            }

            return Task.CompletedTask;
        });

    /// <summary>
    /// A succeeded job's result (<see cref="JobResults"/>). Any other status is a 409 whose <c>jobStatus</c> says which:
    /// a job that has not ended may still get one (wait with <c>GET /api/jobs/{jobId}?waitSeconds=</c>), a dead-lettered
    /// one once it is moved back and succeeds. A succeeded job whose effect's row is gone is a 404.
    /// </summary>
    internal static async Task<Results<Ok<JobResult>, ValidationProblem, ProblemHttpResult>> GetJobResult(
        string jobId, ConveyorDbContext db, CancellationToken cancellationToken)
    {
        if (!RouteIds.TryParse(jobId, nameof(jobId), out var id, out var invalid))
        {
            return invalid;
        }

        var job = await db.Jobs.AsNoTracking().WithoutRequestBody().FirstOrDefaultAsync(j => j.Id == id, cancellationToken);
        if (job is null)
        {
            return JobNotFound(id);
        }

        if (job.Status != JobStatus.Succeeded)
        {
            var detail = HasEnded(job.Status)
                ? $"Job {id} is {job.Status}: only a succeeded job has a result."
                : $"Job {id} is {job.Status}: it has a result once it has succeeded. Wait for it with GET /api/jobs/{id}?waitSeconds=30.";
            return TypedResults.Problem(statusCode: StatusCodes.Status409Conflict, title: "Job has no result", detail: detail,
                extensions: new Dictionary<string, object?>(StringComparer.Ordinal) { ["jobStatus"] = job.Status });
        }

        return await JobResults.ReadAsync(db, job, cancellationToken) is { } result
            ? TypedResults.Ok(result)
            : Problem(StatusCodes.Status404NotFound, "Result not found",
                $"Job {id} succeeded, but the record of its effect ({job.Kind} {job.BusinessKey}) is not in the database.");
    }

    /// <summary>Statuses a job rests in until someone acts (a dead-lettered one may be moved back).</summary>
    private static bool HasEnded(string status) =>
        status is JobStatus.Succeeded or JobStatus.DeadLettered or JobStatus.Cancelled;

    internal static async Task<Results<Ok<JobPage>, ValidationProblem>> ListJobs(
        string? status, string? kind, string? businessKey, string? limit, string? cursor, string? order,
        ConveyorDbContext db, IOptions<JobListingOptions> options, CancellationToken cancellationToken)
    {
        var errors = new FieldErrors();
        var query = JobListing.Parse(status, kind, businessKey, limit, cursor, order, errors);
        return query is null
            ? TypedResults.ValidationProblem(errors.ToDictionary())
            : TypedResults.Ok(await JobListing.ListAsync(db, query, SettleHorizon.From(options.Value), cancellationToken));
    }

    internal static async Task<Results<Ok<JobDetails>, ValidationProblem, ProblemHttpResult>> CancelJob(
        string jobId, JobCanceller canceller, HttpContext http, CancellationToken cancellationToken)
    {
        if (!RouteIds.TryParse(jobId, nameof(jobId), out var id, out var invalid))
        {
            return invalid;
        }

        var result = await canceller.CancelAsync(id, cancellationToken);
        return result switch
        {
            { Status: CancelStatus.Cancelled or CancelStatus.AlreadyCancelled, Job: { } job } => TypedResults.Ok(JobDetails.From(job)),
            { Status: CancelStatus.TooLate, Job: { } job } => Problem(StatusCodes.Status409Conflict, "Job cannot be cancelled",
                job.Status == JobStatus.Queued
                    ? $"Job {id} is queued again after an attempt that was cut short; only jobs that have not started can be cancelled."
                    : $"Job {id} is {job.Status}; only queued or scheduled jobs can be cancelled."),
            { Status: CancelStatus.Busy } => Busy(http,
                $"Job {id} is being written by a worker or the scheduler right now (most likely it is starting), so it was left as it was. " +
                "Retry later: a job that has not started by then is cancelled; one that has is answered as such."),
            _ => JobNotFound(id),
        };
    }

    /// <summary>
    /// 202 with the job once its stored command is due now (or had been released already: a repeat, or a dispatch that came
    /// first); the job shows <c>nextAttemptAt</c> at that time and keeps its status until a worker takes the command.
    /// </summary>
    internal static async Task<Results<Accepted<JobDetails>, ValidationProblem, ProblemHttpResult>> RunJobNow(
        string jobId, JobRunNow runNow, BackpressureGate backpressure, HttpContext http, CancellationToken cancellationToken)
    {
        if (!RouteIds.TryParse(jobId, nameof(jobId), out var id, out var invalid))
        {
            return invalid;
        }

        var result = await runNow.RunNowAsync(id, cancellationToken);
        return result switch
        {
            { Status: RunNowStatus.Due, Job: { } job } => TypedResults.Accepted($"/api/jobs/{job.Id}", JobDetails.From(job)),
            { Status: RunNowStatus.NotWaiting, Job: { } job } => NotWaiting(job),
            { Status: RunNowStatus.Refused, Job: { } job } => RefuseAdmission(http, result.Refusal, backpressure, $"Job {job.Id} was left waiting; retry later."),
            { Status: RunNowStatus.Busy } => Busy(http,
                $"Job {id} is being written by a worker or the scheduler right now (most likely its command is being published), so it was left as it was. Retry later."),
            _ => JobNotFound(id),
        };
    }

    /// <summary>
    /// <c>POST /api/jobs/run-now</c> <c>{ kind, status?, limit? }</c>: every job of the kind in the status (retry-scheduled
    /// unless given; or scheduled) whose stored command waits for its time, up to the limit, soonest first, made due now.
    /// </summary>
    internal static async Task<Results<Ok<JobsRunNow>, ValidationProblem, ProblemHttpResult>> RunJobsNow(
        HttpContext http, JobRunNow runNow, BackpressureGate backpressure, CancellationToken cancellationToken)
    {
        if (RequestBody.UnsupportedMedia(http.Request, "the request") is { } unsupported)
        {
            return Problem(StatusCodes.Status415UnsupportedMediaType, "Unsupported media type", unsupported);
        }

        var body = await RequestBody.ReadAtMostAsync(http.Request.Body, MaxRunNowBodyBytes, cancellationToken);
        if (body is null)
        {
            return Problem(StatusCodes.Status413PayloadTooLarge, "Request body too large", $"The body must be at most {MaxRunNowBodyBytes} bytes.");
        }

        var errors = new FieldErrors();
        using var document = JsonBody.ParseObject(body, errors, _ => "The body is not valid JSON; each field may appear once.");
        if (document is null)
        {
            return TypedResults.ValidationProblem(errors.ToDictionary());
        }

        var fields = new JsonFields(document.RootElement, errors);
        var kind = fields.RequiredString("kind", k => JobKinds.All.Contains(k) ? null : $"Must be one of: {string.Join(", ", JobKinds.All)}.");
        var status = fields.OptionalString("status", s => s is JobStatus.RetryScheduled or JobStatus.Scheduled
            ? null
            : $"Must be {JobStatus.RetryScheduled} or {JobStatus.Scheduled}: only those wait in the store.") ?? JobStatus.RetryScheduled;
        var limit = fields.OptionalInt32("limit", 1, MaxRunNowLimit) ?? DefaultRunNowLimit;
        fields.RejectUnknown("a run-now request");
        if (errors.Count > 0)
        {
            return TypedResults.ValidationProblem(errors.ToDictionary());
        }

        var result = await runNow.RunNowManyAsync(kind, status, limit, cancellationToken);
        return result.Summary is { } summary
            ? TypedResults.Ok(summary)
            : RefuseAdmission(http, result.Refusal, backpressure, $"No {kind} job was made due now; retry later.");
    }

    /// <summary>A run-now of a job with nothing waiting in the store: the 409 says its status, and what can be done instead.</summary>
    private static ProblemHttpResult NotWaiting(Job job)
    {
        var detail = job.Status switch
        {
            JobStatus.Queued or JobStatus.Running => $"Job {job.Id} is {job.Status}: its command is in its queue or being run already.",
            JobStatus.DeadLettered => $"Job {job.Id} is dead-lettered: its command is in {job.Kind}_error. Move it back with POST /api/error-queues/{job.Kind}_error/move and the filter {{ \"jobIds\": [\"{job.Id}\"] }}.",
            _ => $"Job {job.Id} is {job.Status}: it has ended.",
        };
        return TypedResults.Problem(statusCode: StatusCodes.Status409Conflict, title: "Job not waiting", detail: detail,
            extensions: new Dictionary<string, object?>(StringComparer.Ordinal) { ["jobStatus"] = job.Status });
    }

    /// <summary>A cancel or run-now that found the job held by another transaction: nothing changed, and a retry may settle it.</summary>
    private static ProblemHttpResult Busy(HttpContext http, string detail) =>
        RetryAfterResponses.RetryLater(http, RetryAfterSeconds, Problem(StatusCodes.Status409Conflict, "Job busy", detail));

    private static ProblemHttpResult JobNotFound(Guid id) => Problem(StatusCodes.Status404NotFound, "Job not found", $"There is no job {id}.");

    private static ProblemHttpResult Problem(int status, string title, string detail) =>
        TypedResults.Problem(statusCode: status, title: title, detail: detail);
}
