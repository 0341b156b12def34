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

public static class ApiScopes
{
    public const string Admin = "admin";
    public const string JobsRead = "jobs:read";
    public const string JobsPublish = "jobs:publish";
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

        services.AddAccessControl(configuration);
        return services;
    }
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
