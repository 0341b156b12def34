using Conveyor.Api.Backpressure;
using Conveyor.Api.Hosting;
using Conveyor.Api.Jobs;
using Conveyor.Api.Operations;
using Conveyor.Api.Security;
using Conveyor.Storage;
using Conveyor.Storage.Jobs;
using Conveyor.Storage.Operations;
using Microsoft.AspNetCore.Http.HttpResults;
using Microsoft.EntityFrameworkCore;
using Microsoft.Extensions.DependencyInjection.Extensions;

namespace Conveyor.Api.ErrorQueues;

/// <summary>
/// <c>/api/error-queues</c>: list the <c>_error</c>/<c>_skipped</c> queues, inspect their messages and
/// fault groups, and start moves and purges. Admin only.
/// </summary>
internal static class ErrorQueuesApi
{
    public const int DefaultPeekLimit = 20;
    public const int MaxPeekLimit = 500;
    public const int DefaultGroupsLimit = 10_000;
    public const int MaxGroupsLimit = 100_000;

    /// <summary>
    /// A move's or purge's body: room for the largest filter a request may hold, the most message ids and job
    /// ids (36-character UUIDs) it takes, with every character written as a six-byte <c>\uXXXX</c> escape
    /// (System.Text.Json escapes every non-ASCII character so by default, and a message id may hold any), plus
    /// 64 KiB for the other fields. About 1.4 MiB, under the server's <see cref="ApiApp.MaxRequestBodyBytes"/>.
    /// </summary>
    public const int MaxBodyBytes = MessageFilter.MaxMessageIds * ((MessageFilter.MaxMessageIdLength * EscapedCharBytes) + 3)
        + (MessageFilter.MaxMessageIds * ((36 * EscapedCharBytes) + 3)) + (64 * 1024);

    private const int EscapedCharBytes = 6;

    /// <summary>
    /// Seconds a client is told to wait when the queue is busy (another inspection or operation holds its
    /// lock, for a time no one knows ahead: a short wait, then a new try) or the broker cannot be reached
    /// (as a submission is told, <see cref="JobsApi.RetryAfterSeconds"/>).
    /// </summary>
    public const int RetryAfterSeconds = JobsApi.RetryAfterSeconds;

    public static IServiceCollection AddErrorQueues(this IServiceCollection services)
    {
        services.AddOptions<ErrorQueueOptions>()
            .BindConfiguration(ErrorQueueOptions.SectionName)
            .ValidateDataAnnotations()
            .ValidateOnStart();
        services.AddHttpClient<RabbitManagementClient>((provider, http) =>
            RabbitManagementClient.Configure(http, provider.GetRequiredService<Microsoft.Extensions.Options.IOptions<ServiceDefaults.RabbitMqOptions>>().Value));
        services.AddSingleton<ErrorQueueBroker>();
        services.AddSingleton<ExactQueueCounts>();
        services.AddSingleton<QueueLocks>();
        services.AddSingleton<OperationRunner>();
        services.AddSingleton<AbandonedOperations>();
        services.AddHostedService(provider => provider.GetRequiredService<OperationRunner>());
        services.AddSingleton<ErrorQueueInspector>();
        services.TryAddSingleton<BrokerReadings>();
        services.AddSingleton<ErrorQueueDepthMonitor>();
        services.AddHostedService(provider => provider.GetRequiredService<ErrorQueueDepthMonitor>());
        return services;
    }

    public static IEndpointRouteBuilder MapErrorQueuesApi(this IEndpointRouteBuilder endpoints)
    {
        var queues = endpoints.MapGroup("/api/error-queues")
            .WithTags("Error queues")
            .RequireAuthorization(ApiPolicies.Admin)
            .RefuseUnknownQueryParameters()
            // After the unknown ones: a move or purge takes no query parameter, given once or twice.
            .RefuseRepeatedQueryParameters()
            // Its 503 is also the broker's (unreachable, or a queue's lock lost).
            .ProducesCallerProblems();

        queues.MapGet("/", ListQueues)
            .WithName("ListErrorQueues")
            .WithSummary("Every _error and _skipped queue of the vhost, with its depth and source queue.");

        queues.MapGet("/{queue}/messages", PeekMessages)
            .WithName("PeekErrorQueueMessages")
            .WithSummary("The first messages of an error queue with their faults; nothing is removed or reordered.")
            .ProducesProblem(StatusCodes.Status404NotFound)
            .ProducesProblemWithRetryAfter(StatusCodes.Status409Conflict);

        queues.MapGet("/{queue}/groups", Groups)
            .WithName("GroupErrorQueueMessages")
            .WithSummary("Messages grouped by fault fingerprint (exception type and normalised message).")
            .ProducesProblem(StatusCodes.Status404NotFound)
            .ProducesProblemWithRetryAfter(StatusCodes.Status409Conflict);

        queues.MapPost("/{queue}/move", (string queue, HttpContext http, RabbitManagementClient management, OperationRunner runner, CancellationToken cancellationToken) =>
                StartOperation(ErrorQueueOperationKinds.Move, queue, http, management, runner, cancellationToken))
            .WithName("MoveErrorQueueMessages")
            .WithSummary("Starts moving matching messages back to their original queue (or a target); answers 202 with the operation.")
            .ProducesProblem(StatusCodes.Status404NotFound)
            .ProducesProblemWithRetryAfter(StatusCodes.Status409Conflict)
            .ProducesProblem(StatusCodes.Status413PayloadTooLarge)
            .ProducesProblem(StatusCodes.Status415UnsupportedMediaType);

        queues.MapPost("/{queue}/purge", (string queue, HttpContext http, RabbitManagementClient management, OperationRunner runner, CancellationToken cancellationToken) =>
                StartOperation(ErrorQueueOperationKinds.Purge, queue, http, management, runner, cancellationToken))
            .WithName("PurgeErrorQueueMessages")
            .WithSummary("Starts deleting matching messages; the body must confirm the queue name. Answers 202 with the operation.")
            .ProducesProblem(StatusCodes.Status404NotFound)
            .ProducesProblemWithRetryAfter(StatusCodes.Status409Conflict)
            .ProducesProblem(StatusCodes.Status413PayloadTooLarge)
            .ProducesProblem(StatusCodes.Status415UnsupportedMediaType);

        return endpoints;
    }

    /// <summary>
    /// The management API names the queues; their ready messages and consumers are then read from the broker
    /// itself (<see cref="ExactQueueCounts"/>), so a listing right after a move or purge shows what is left, not
    /// the statistics of a few seconds before. Unacknowledged messages are held by a consumer (a walk: no worker
    /// consumes these queues), so they are the management API's count while the queue has one, and 0 once it has
    /// none: a walk that ended would otherwise still count what it held when the statistics were last collected.
    /// Should the broker not answer those reads, the listing gives the management API's counts alone.
    /// </summary>
    internal static async Task<Results<Ok<IReadOnlyList<ErrorQueueSummary>>, ProblemHttpResult>> ListQueues(
        HttpContext http, RabbitManagementClient management, ExactQueueCounts exact, ILogger<ExactQueueCounts> logger, CancellationToken cancellationToken)
    {
        try
        {
            var queues = (await management.QueuesAsync(cancellationToken))
                .Where(q => ErrorQueueNames.IsErrorOrSkipped(q.Name))
                .OrderBy(q => q.Name, StringComparer.Ordinal)
                .ToList();
            IReadOnlyDictionary<string, ExactQueueCounts.Count>? now = null;
            try
            {
                now = await exact.ReadAsync([.. queues.Select(q => q.Name)], cancellationToken);
            }
            catch (Exception exception) when (exception is not OutOfMemoryException && !cancellationToken.IsCancellationRequested)
            {
                ErrorQueuesLog.ExactCountsUnread(logger, exception);
            }

            IReadOnlyList<ErrorQueueSummary> summaries = now is null
                ? [.. queues.Select(q => Summary(q.Name, q.Ready, q.Unacknowledged, q.Consumers))]
                : [.. queues.Where(q => now[q.Name].Exists).Select(q => Summary(q.Name, now[q.Name].Ready, now[q.Name].Consumers == 0 ? 0 : q.Unacknowledged, now[q.Name].Consumers))];
            return TypedResults.Ok(summaries);
        }
        catch (BrokerUnavailableException exception)
        {
            return BrokerUnavailable(http, exception);
        }
    }

    private static ErrorQueueSummary Summary(string queue, long ready, long unacknowledged, int consumers) => new(
        queue, ErrorQueueNames.Kind(queue)!, ErrorQueueNames.SourceQueueOf(queue), ready + unacknowledged, ready, unacknowledged, consumers);

    internal static Task<Results<Ok<ErrorQueueMessages>, ValidationProblem, ProblemHttpResult>> PeekMessages(
        string queue, string? limit, HttpContext http, RabbitManagementClient management, ErrorQueueInspector inspector,
        IDbContextFactory<ConveyorDbContext> dbFactory, ILogger<ErrorQueueInspector> logger, CancellationToken cancellationToken)
    {
        queue = ErrorQueueNames.FromRoute(http, queue);
        return InspectAsync(
            queue, limit, (DefaultPeekLimit, MaxPeekLimit), "messages", http, management, logger,
            count => inspector.PeekAsync(queue, count, cancellationToken),
            async inspection =>
            {
                var statuses = await JobStatusesAsync(ErrorQueueMessage.JobIds(inspection.Result!), dbFactory, cancellationToken);
                return new ErrorQueueMessages(
                    queue, inspection.QueueDepth, [.. inspection.Result!.Select(m => ErrorQueueMessage.From(queue, m, statuses))], inspection.StoppedEarly);
            },
            cancellationToken);
    }

    /// <summary>
    /// The current status of each job by id; a job whose row is gone is left out. The peek has just
    /// used the database (its lock against a running operation), so a failure here is one more
    /// outage answered as any other (503).
    /// </summary>
    private static async Task<IReadOnlyDictionary<Guid, string>> JobStatusesAsync(
        IReadOnlyList<Guid> jobIds, IDbContextFactory<ConveyorDbContext> dbFactory, CancellationToken cancellationToken)
    {
        await using var db = await dbFactory.CreateDbContextAsync(cancellationToken);
        return await db.StatusesByIdAsync(jobIds, cancellationToken);
    }

    internal static Task<Results<Ok<ErrorQueueGroups>, ValidationProblem, ProblemHttpResult>> Groups(
        string queue, string? limit, HttpContext http, RabbitManagementClient management, ErrorQueueInspector inspector,
        ILogger<ErrorQueueInspector> logger, CancellationToken cancellationToken)
    {
        queue = ErrorQueueNames.FromRoute(http, queue);
        return InspectAsync(
            queue, limit, (DefaultGroupsLimit, MaxGroupsLimit), "groups", http, management, logger,
            count => inspector.GroupsAsync(queue, count, cancellationToken),
            inspection => Task.FromResult(new ErrorQueueGroups(
                queue, inspection.QueueDepth, inspection.Examined, [.. inspection.Result!.Groups.Select(ErrorQueueGroup.From)], inspection.Result.Ungrouped,
                inspection.StoppedEarly)),
            cancellationToken);
    }

    /// <summary>A read of an error queue (peek or groups): the limit, the queue, the walk, the answer or why there is none.</summary>
    private static async Task<Results<Ok<TAnswer>, ValidationProblem, ProblemHttpResult>> InspectAsync<TFound, TAnswer>(
        string queue, string? limit, (int Default, int Max) limits, string what, HttpContext http, RabbitManagementClient management,
        ILogger<ErrorQueueInspector> logger, Func<int, Task<Inspection<TFound>>> inspect, Func<Inspection<TFound>, Task<TAnswer>> answer,
        CancellationToken cancellationToken)
    {
        if (!QueryIntegers.TryRead(limit, limits.Default, 1, limits.Max, out var count))
        {
            return LimitProblem(limits.Max);
        }

        try
        {
            if (await CheckQueueAsync(queue, management, cancellationToken) is { } problem)
            {
                return problem;
            }

            var inspection = await inspect(count);
            if (inspection.Busy)
            {
                return Busy(http, queue, inspection.RunningOperationId);
            }

            var who = Who(http);
            if (inspection.StoppedEarly is { } reason)
            {
                ErrorQueuesLog.InspectedPartly(logger, who, queue, what, inspection.Examined, reason);
            }
            else
            {
                ErrorQueuesLog.Inspected(logger, who, queue, what, inspection.Examined);
            }
            return TypedResults.Ok(await answer(inspection));
        }
        catch (QueueNotFoundException)
        {
            return QueueNotFound(queue);
        }
        catch (QueueLockLostException exception)
        {
            // The database session holding the queue's lock went away: the database's outage, as ErrorHandling answers one.
            return RetryAfterResponses.RetryLater(http, ErrorHandling.DatabaseRetryAfterSeconds, Problem(StatusCodes.Status503ServiceUnavailable, "Queue lock lost", exception.Message));
        }
        catch (Exception exception) when (IsBrokerFailure(exception))
        {
            return BrokerUnavailable(http, exception);
        }
    }

    internal static async Task<Results<Accepted<OperationAccepted>, ValidationProblem, ProblemHttpResult>> StartOperation(
        string kind, string queue, HttpContext http, RabbitManagementClient management, OperationRunner runner, CancellationToken cancellationToken)
    {
        queue = ErrorQueueNames.FromRoute(http, queue);
        var purge = kind == ErrorQueueOperationKinds.Purge;
        try
        {
            if (await CheckQueueAsync(queue, management, cancellationToken) is { } problem)
            {
                return problem;
            }

            if (RequestBody.UnsupportedMedia(http.Request, "the request") is { } unsupported)
            {
                return Problem(StatusCodes.Status415UnsupportedMediaType, "Unsupported media type", unsupported);
            }

            var body = await RequestBody.ReadAtMostAsync(http.Request.Body, MaxBodyBytes, cancellationToken);
            if (body is null)
            {
                return Problem(StatusCodes.Status413PayloadTooLarge, "Request body too large", $"The body must be at most {MaxBodyBytes} bytes.");
            }

            var errors = new FieldErrors();
            var request = OperationRequestParser.Parse(body, purge, errors);
            if (request is not null)
            {
                await CheckTargetAsync(request.Target, queue, management, errors, cancellationToken);
                if (purge && !request.DryRun && !string.Equals(request.Confirm, queue, StringComparison.Ordinal))
                {
                    errors.Add("confirm", $"A purge deletes messages for good: set confirm to the queue name, \"{queue}\".");
                }
            }

            if (request is null || errors.Count > 0)
            {
                return TypedResults.ValidationProblem(errors.ToDictionary());
            }

            var started = await runner.StartAsync(
                new OperationRequest(kind, queue, request.Filter, request.Target, request.Limit, request.DryRun,
                    Who(http), http.Connection.RemoteIpAddress?.ToString()),
                cancellationToken);
            return started.Status == StartStatus.Started
                ? TypedResults.Accepted($"/api/operations/{started.OperationId}",
                    new OperationAccepted(started.OperationId!.Value, kind, queue, ErrorQueueOperationStates.Running, request.DryRun))
                : Busy(http, queue, started.RunningOperationId);
        }
        catch (Exception exception) when (IsBrokerFailure(exception))
        {
            return BrokerUnavailable(http, exception);
        }
    }

    /// <summary>404 unless the name is an error or skipped queue that exists.</summary>
    private static async Task<ProblemHttpResult?> CheckQueueAsync(string queue, RabbitManagementClient management, CancellationToken cancellationToken)
    {
        if (!ErrorQueueNames.IsErrorOrSkipped(queue))
        {
            return Problem(StatusCodes.Status404NotFound, "Not an error queue",
                $"'{queue}' is not an error queue: its name must end in {ErrorQueueNames.ErrorSuffix} or {ErrorQueueNames.SkippedSuffix}.");
        }

        return await management.QueueAsync(queue, cancellationToken) is null ? QueueNotFound(queue) : null;
    }

    private static async Task CheckTargetAsync(
        string? target, string queue, RabbitManagementClient management, FieldErrors errors, CancellationToken cancellationToken)
    {
        if (target is null)
        {
            return;
        }

        if (target == queue || ErrorQueueNames.Kind(target) is not null)
        {
            errors.Add("target", "Must be a work queue, not an _error or _skipped queue.");
        }
        else if (ErrorQueueNames.NameProblem(target) is { } problem)
        {
            errors.Add("target", problem);
        }
        else if (await management.QueueAsync(target, cancellationToken) is null)
        {
            errors.Add("target", $"There is no queue '{target}'.");
        }
    }

    private static ValidationProblem LimitProblem(int max) =>
        TypedResults.ValidationProblem(new Dictionary<string, string[]> { ["limit"] = [$"Must be an integer between 1 and {max}."] });

    private static bool IsBrokerFailure(Exception exception) =>
        exception is BrokerUnavailableException or RabbitMQ.Client.Exceptions.BrokerUnreachableException
            or RabbitMQ.Client.Exceptions.AlreadyClosedException or RabbitMQ.Client.Exceptions.OperationInterruptedException
            or WalkInterruptedException;

    internal static string Who(HttpContext http) => http.User.Identity?.Name ?? "(unknown)";

    private static ProblemHttpResult QueueNotFound(string queue) =>
        Problem(StatusCodes.Status404NotFound, "Queue not found", $"There is no queue '{queue}' in this vhost.");

    /// <summary>409, with <see cref="RetryAfterSeconds"/>: the queue is free again once the inspection or operation ends.</summary>
    private static ProblemHttpResult Busy(HttpContext http, string queue, Guid? operationId)
    {
        var detail = operationId is { } id
            ? $"Operation {id} is running on '{queue}'; wait for it to end (GET /api/operations/{id})."
            : $"Another inspection or operation is using '{queue}'; retry shortly.";
        return RetryAfterResponses.RetryLater(http, RetryAfterSeconds, TypedResults.Problem(
            statusCode: StatusCodes.Status409Conflict,
            title: "Queue busy",
            detail: detail,
            extensions: operationId is { } running ? new Dictionary<string, object?> { ["operationId"] = running } : null));
    }

    private static ProblemHttpResult BrokerUnavailable(HttpContext http, Exception exception) =>
        RetryAfterResponses.RetryLater(http, RetryAfterSeconds, Problem(StatusCodes.Status503ServiceUnavailable, "Message broker unavailable",
            exception is BrokerUnavailableException ? exception.Message : "RabbitMQ could not be reached; retry later."));

    private static ProblemHttpResult Problem(int status, string title, string detail) =>
        TypedResults.Problem(statusCode: status, title: title, detail: detail);
}
