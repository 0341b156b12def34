using Microsoft.Extensions.DependencyInjection.Extensions;
using Microsoft.Extensions.Options;

namespace Conveyor.Api.Security;

/// <summary>Names of the authorization policies and scopes.</summary>
public static class ApiPolicies
{
    /// <summary>Error-queue inspection, moves, purges, operations and audit.</summary>
    public const string Admin = "admin";

    /// <summary>Reading jobs (scope <c>jobs:read</c> or <c>admin</c>).</summary>
    public const string JobsRead = "jobs:read";

    /// <summary>Submitting and cancelling jobs (scope <c>jobs:publish</c> or <c>admin</c>).</summary>
    public const string JobsPublish = "jobs:publish";
}

/// <summary>The scopes an API key may carry, and which of them each policy accepts.</summary>
public static class ApiScopes
{
    public const string Admin = "admin";
    public const string JobsRead = "jobs:read";
    public const string JobsPublish = "jobs:publish";

    /// <summary>
    /// The scopes each policy accepts: the one place that says what a scope grants. The policies are
    /// built from it, and <see cref="Known"/> is read from it.
    /// </summary>
    public static IReadOnlyDictionary<string, string[]> ByPolicy { get; } = new Dictionary<string, string[]>(StringComparer.Ordinal)
    {
        [ApiPolicies.Admin] = [Admin],
        [ApiPolicies.JobsRead] = [JobsRead, Admin],
        [ApiPolicies.JobsPublish] = [JobsPublish, Admin],
    };

    /// <summary>Every scope some policy accepts, compared as the policies compare them (ordinal). Any other scope grants nothing.</summary>
    public static IReadOnlyList<string> Known { get; } = [.. ByPolicy.Values.SelectMany(scopes => scopes).Distinct(StringComparer.Ordinal).Order(StringComparer.Ordinal)];
}

internal static class SecurityRegistration
{
    /// <summary>
    /// API-key authentication, the dashboard session, the scope policies and default deny
    /// (see <see cref="AccessControl"/> and docs/adr/0003-access-control.md).
    /// </summary>
    public static IServiceCollection AddApiSecurity(this IServiceCollection services, IConfiguration configuration)
    {
        services.AddOptions<ApiKeyOptions>()
            .Configure(options => options.ApiKeys = ApiKeyOptions.From(configuration).ApiKeys)
            .ValidateOnStart();
        services.AddSingleton<IValidateOptions<ApiKeyOptions>, ApiKeyOptionsValidator>();
        services.AddSingleton<ApiKeyStore>();
        services.AddOptions<AuthThrottlingOptions>()
            .BindConfiguration(AuthThrottlingOptions.SectionName)
            .ValidateDataAnnotations()
            .ValidateOnStart();
        services.TryAddSingleton(TimeProvider.System);
        services.AddSingleton<AuthThrottle>();
        services.AddHostedService<UnknownScopeWarnings>();

        services.AddAccessControl(configuration);
        return services;
    }
}

/// <summary>
/// Names, at start, each key that carries a scope no policy accepts (a typo such as <c>jobs:publsh</c>):
/// such a key authenticates, but the scope grants nothing, so its calls get 403s. A warning rather than
/// a refusal to start: a key may carry a scope meant for a newer Api during a rollout.
/// </summary>
internal sealed class UnknownScopeWarnings(IOptions<ApiKeyOptions> options, ILogger<UnknownScopeWarnings> logger) : IHostedService
{
    public Task StartAsync(CancellationToken cancellationToken)
    {
        var known = string.Join(", ", ApiScopes.Known);
        foreach (var key in options.Value.ApiKeys)
        {
            if (key.UnknownScopes() is { Count: > 0 } unknown)
            {
                SecurityLog.UnknownScopes(logger, key.Name, key.Path, string.Join(", ", unknown), known);
            }
        }

        return Task.CompletedTask;
    }

    public Task StopAsync(CancellationToken cancellationToken) => Task.CompletedTask;
}

/// <summary>Refuses to start with a nameless, short, scope-less or duplicated key.</summary>
internal sealed class ApiKeyOptionsValidator : IValidateOptions<ApiKeyOptions>
{
    public ValidateOptionsResult Validate(string? name, ApiKeyOptions options)
    {
        var problems = options.Validate().ToList();
        return problems.Count == 0 ? ValidateOptionsResult.Success : ValidateOptionsResult.Fail(problems);
    }
}
